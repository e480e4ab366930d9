"""``breastdx evaluate``: validate a model on labelled local data, torch-free.

The service's own inference path (``service.inference.analyse_each``) runs on every case of a
labelled data set (``formats``); ``score`` compares its output with the truth at the image's
original geometry, ``figures`` summarises with bootstrap intervals, ``report`` writes
``report.json`` and ``report.html``, ``card`` turns a report into a model card's test figures.
``metrics`` holds the numpy metrics training shares. Importing this package imports nothing.
"""
