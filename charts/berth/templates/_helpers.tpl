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
Operator image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "berth.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Default trainer image reference (`--default-image`); the tag defaults to the chart's appVersion.
*/}}
{{- define "berth.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) }}
{{- end }}

{{/*
"true" when kopf peering runs: asked for, or needed because several replicas run.
*/}}
{{- define "berth.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/*
Name of the kopf peering object.
*/}}
{{- define "berth.peeringName" -}}
{{- default (include "berth.fullname" .) .Values.peering.name }}
{{- end }}

{{/*
Namespaces that get the worker NetworkPolicy.
*/}}
{{- define "berth.networkPolicyNamespaces" -}}
{{- $namespaces := .Values.networkPolicy.namespaces | default .Values.watchNamespaces | default (list .Release.Namespace) }}
{{- toJson (uniq $namespaces) }}
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
# Worker pods: listed and watched by label (the controller's cache), created and deleted.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "create", "delete"]
# Each training's headless Service (created once; owned by the training, garbage-collected).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create"]
# Each training's ConfigMap (created, or its data patched up to date). A server-side dry-run
# create also tells whether the namespace is being deleted before a failure is acted on.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "patch"]
# Events on trainings, from kopf and from the reconcile pass.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- with .Values.rbac.tpuCredentialsSecrets }}
# Cloud TPU keys named by spec.tpu.credentialsSecret: only these Secrets, only get (opt-in).
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get"]
{{- end }}
{{- if .Values.kueue.enabled }}
# Kueue (opt-in): the Workload of each queued training, listed and watched by label, created,
# patched (spec.active, the finalizer) and, on eviction and completion, its status patched.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads/status"]
  verbs: ["patch"]
{{- end }}
{{- if and (include "berth.peering" .) .Values.watchNamespaces }}
# kopf peering (namespaced mode): keep-alives in each watched namespace's KopfPeering.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

{{/*
Cluster-scoped rules kopf needs in both modes.
*/}}
{{- define "berth.clusterRules" -}}
# kopf scans CRDs to find the BertTraining resource and the peering resources.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# kopf (namespaced mode) watches namespaces to notice watched ones appear and go.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- else if include "berth.peering" . }}
# kopf peering (cluster-wide mode): keep-alives in the ClusterKopfPeering.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- if .Values.kueue.enabled }}
# Kueue (opt-in): the admitted ResourceFlavors' node labels and tolerations go on the workers;
# a WorkloadPriorityClass gives a Workload its priority.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["resourceflavors", "workloadpriorityclasses"]
  verbs: ["get"]
{{- end }}
{{- end }}
