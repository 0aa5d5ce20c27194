"""`kubectl berth`: follow a BertTraining from the command line (the `kubectl-berth` plugin).

`kubectl` runs any `kubectl-<name>` on PATH as `kubectl <name>`; the operator package installs
this one. Its commands read the training, its pods and its events as plain dicts:

- `logs NAME [-f] [--worker N | --all]`: the workers' logs, following across group restarts
  (`berth_operator.kubectl.logs`);
- `describe NAME`: phase, conditions, progress, workers, restarts and events on one screen
  (`berth_operator.kubectl.describe`, a pure `render`);
- `tensorboard NAME`: port-forwards to the training's TensorBoard
  (`berth_operator.kubectl.tensorboard`).

`berth_operator.kubectl.reader` holds the few reads they share; `cli` the flags and errors.
"""
