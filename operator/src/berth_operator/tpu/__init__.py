"""TPU support: GKE TPU node pools (`node`) and Cloud TPU VMs (`client`, `policy`, `handlers`).

`spec.tpu.provider: gke` trainings run as ordinary worker pods (the pod path, with
`node.apply_gke` on top); `provider: cloud` trainings have no pods and are reconciled by
`tpu.handlers` against the Cloud TPU API.
"""
