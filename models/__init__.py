"""vizoo's models: one Pyro model per module (``models/<name>.py``), exact references in plain torch
(``models/exact/``), every real-data loader (``models/datasets/``, one signature
``load_<name>(opts, args, seed) -> Dataset``) and the registry's types (``models/spec.py``).

Parameters of PyroModules live in their modules, not in Pyro's global param store: two runs in one process
never share state, and a module's state_dict is all there is to save.
"""

import pyro

pyro.settings.set(module_local_params=True)
