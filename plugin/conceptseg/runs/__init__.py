"""Everything that reads and writes FiftyOne: runs over views, their records, review and the library.

The run plan (``plan``: output fields, model, resume, the run's record) is followed by the
in-process run (``jobs``) and the sharded one (``shards/``); ``writing`` writes the labels,
``names`` names fields, keys and folders. ``records`` lists runs and ``delete`` removes one;
``locks`` keeps one writer per output field. ``evaluation`` and ``protocol`` score runs,
``review/`` is the labelling loop, ``library/`` the saved concepts, ``zoo_model`` the model
FiftyOne's ``apply_model`` runs. ``fiftyone_io``, ``classes``, ``video`` and ``outputs`` turn
samples into demonstrations and targets and masks into labels and files.
"""
