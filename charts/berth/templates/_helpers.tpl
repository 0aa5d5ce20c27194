{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: `<release>-<chart>`, or the release name when it already contains
the chart name.
*/}}
{{- define "berth.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
`<chart>-<version>` for the helm.sh/chart label.
*/}}
{{- define "berth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object the chart creates.
*/}}
{{- define "berth.labels" -}}
helm.sh/chart: {{ include "berth.chart" . }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: berth
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: name and instance only, so they never change on upgrade.
*/}}
{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {image, appVersion}: `repository@digest` when a digest is set (the
content itself, whatever a tag points to later), else `repository:tag`, the tag defaulting to
the chart's appVersion.
*/}}
{{- define "berth.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
Operator image reference.
*/}}
{{- define "berth.image" -}}
{{- include "berth.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/*
Default trainer image reference (`--default-image`).
*/}}
{{- define "berth.trainerImage" -}}
{{- include "berth.imageRef" (dict "image" .Values.trainer.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/*
Name of the Lease the operator replicas campaign for (in the release namespace).
*/}}
{{- define "berth.leaseName" -}}
{{- include "berth.fullname" . }}
{{- end }}

{{/*
The NetworkPolicyPeer of the operator's own pods: it alone (with networkPolicy.metricsFrom)
may reach the workers' metrics port, where it reads progress.
*/}}
{{- define "berth.operatorPeer" -}}
{{- $peer := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace)) }}
{{- $_ := set $peer "podSelector" (dict "matchLabels" (include "berth.selectorLabels" . | fromYaml)) }}
{{- toJson $peer }}
{{- end }}

{{/*
RBAC rules the operator needs in every namespace it watches: the same list backs the
ClusterRole (cluster-wide mode) and each Role (namespaced mode). Only what the operator calls
(docs/operator.md); tests/unit/chart/test_chart_rbac.py asserts there are no wildcards, and
tests/integration/test_chart_install.py runs the operator under exactly these rules.
*/}}
{{- define "berth.namespacedRules" -}}
# BertTrainings: kopf lists and watches them (the controller's cache) and patches finalizers
# and annotations of Cloud TPU ones; finished ones are deleted after ttlSecondsAfterFinished.
- apiGroups: ["berth.dev"]
  resources: ["berttrainings"]
  verbs: ["list", "watch", "patch", "delete"]
# A status patch when a pass changes something.
- apiGroups: ["berth.dev"]
  resources: ["berttrainings/status"]
  verbs: ["patch"]
# Worker pods: listed and watched by label (the controller's cache), created and deleted. A
# create that finds the name taken reads that object (get): it counts as the training's only if
# it carries the training's ownerReference; so for Services, ConfigMaps and NetworkPolicies.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Each training's headless Service (created once; owned by the training, garbage-collected),
# and its TensorBoard Service (spec.tensorboard; deleted when it is disabled, if the training
# owns it).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "delete"]
# Each training's ConfigMap (created, or its data patched up to date if the training owns it).
# A server-side dry-run create also tells whether the namespace is being deleted before a
# failure is acted on.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
# Events on trainings, from kopf and from the reconcile pass.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# The data.prepare Job of a training (spec.data.prepare): listed and watched by label (the
# controller's cache), created once before the workers, read when the name is taken, deleted
# when the training is suspended or Kueue takes its admission back while it runs.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The TensorBoard Deployment of a training with spec.tensorboard (created once, read when the
# name is taken, deleted when it is disabled if the training owns it; garbage-collected).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "delete"]
{{- if .Values.networkPolicy.enabled }}
# Each training's NetworkPolicy isolating its workers (created once before them; owned by the
# training, garbage-collected), and its TensorBoard pod's (deleted when spec.tensorboard is
# disabled, if the training owns it).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "delete"]
{{- end }}
{{- with .Values.rbac.tpuCredentialsSecrets }}
# Cloud TPU keys named by spec.tpu.credentialsSecret: only these Secrets, only get (opt-in).
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get"]
{{- end }}
{{- if .Values.kueue.enabled }}
# Kueue (opt-in): the Workload of each queued training, listed and watched by label, created,
# patched (spec.active, the finalizer), deleted when what the workers request changed (Kueue's
# pod sets are immutable: a new one replaces it) and, on eviction and completion, its status
# patched.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads/status"]
  verbs: ["patch"]
{{- end }}
{{- end }}

{{/*
Cluster-scoped rules kopf needs in both modes.
*/}}
{{- define "berth.clusterRules" -}}
# kopf scans CRDs to find the BertTraining resource.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# Whether a worker's node is lost (Ready Unknown, or gone): read only for workers that are not
# Ready or are being deleted; their pods are then deleted with grace 0.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get"]
{{- if .Values.watchNamespaces }}
# kopf (namespaced mode) watches namespaces to notice watched ones appear and go.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- if .Values.kueue.enabled }}
# Kueue (opt-in): the admitted ResourceFlavors' node labels and tolerations go on the workers;
# a WorkloadPriorityClass gives a Workload its priority.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["resourceflavors", "workloadpriorityclasses"]
  verbs: ["get"]
{{- end }}
{{- end }}

{{/*
Pod policy (values `podPolicy`): the levels, strictest first, at which each of the chart's
ValidatingAdmissionPolicies applies. `berth-pod-baseline` refuses what both checking levels
refuse; `berth-pod-restricted` what only `restricted` refuses.
*/}}
{{- define "berth.podPolicyLevels" -}}
{{- if eq . "restricted" }}restricted{{ else }}restricted,baseline{{ end }}
{{- end }}

{{/*
The namespaceSelector of the binding of the policy for `.policy` (restricted or baseline), as
JSON; empty when no namespace is at a level the policy applies to (then neither the policy nor
its binding is rendered). Cluster-wide at such a level: every namespace but those widened past
it; else only the namespaces narrowed to it.
*/}}
{{- define "berth.podPolicySelector" -}}
{{- $levels := splitList "," (include "berth.podPolicyLevels" .policy) }}
{{- $wider := list }}
{{- $covered := list }}
{{- range $namespace, $level := .root.Values.podPolicy.namespaces }}
{{- if has $level $levels }}
{{- $covered = append $covered $namespace }}
{{- else }}
{{- $wider = append $wider $namespace }}
{{- end }}
{{- end }}
{{- $key := "kubernetes.io/metadata.name" }}
{{- if has .root.Values.podPolicy.level $levels }}
{{- if $wider }}
{{- dict "matchExpressions" (list (dict "key" $key "operator" "NotIn" "values" $wider)) | toJson }}
{{- else }}
{{- dict | toJson }}
{{- end }}
{{- else if $covered }}
{{- dict "matchExpressions" (list (dict "key" $key "operator" "In" "values" $covered)) | toJson }}
{{- end }}
{{- end }}

{{/*
What every pod-policy ValidatingAdmissionPolicy matches: BertTrainings created, or updated with
a changed spec.podTemplate (so a training the policy later refuses can still be deleted, and
its finalizer removed). `variables.containers` lists every container and init container as
{path, sc}: the field path the user wrote and its securityContext (`dyn`: CEL map literals are
homogeneous).
*/}}
{{- define "berth.podPolicyMatch" -}}
failurePolicy: Fail
matchConstraints:
  resourceRules:
    - apiGroups: ["berth.dev"]
      apiVersions: ["*"]
      operations: ["CREATE", "UPDATE"]
      resources: ["berttrainings"]
matchConditions:
  - name: pod-template-set-or-changed
    expression: >-
      has(object.spec.podTemplate) && (request.operation == 'CREATE' ||
      !has(oldObject.spec.podTemplate) || object.spec.podTemplate != oldObject.spec.podTemplate)
variables:
  - name: spec
    expression: "object.spec.podTemplate.?spec.orValue({})"
  - name: containers
    expression: >-
      variables.spec.?containers.orValue([]).map(c, {'path':
      dyn('spec.podTemplate.spec.containers[name=' + c.?name.orValue('') + ']'), 'sc':
      c.?securityContext.orValue({})}) + variables.spec.?initContainers.orValue([]).map(c,
      {'path': dyn('spec.podTemplate.spec.initContainers[name=' + c.?name.orValue('') + ']'),
      'sc': c.?securityContext.orValue({})})
{{- end }}

{{/*
Capabilities Pod Security `baseline` lets a container add, as a CEL list.
*/}}
{{- define "berth.baselineCapabilities" -}}
['AUDIT_WRITE', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'MKNOD', 'NET_BIND_SERVICE', 'SETFCAP', 'SETGID', 'SETPCAP', 'SETUID', 'SYS_CHROOT']
{{- end }}
