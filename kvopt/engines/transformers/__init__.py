"""The Transformers engine: loading models and running ``generate`` with a candidate's settings.

Its parts: ``candidate`` (the knob table), ``probe`` (what runs here), ``source`` and
``loading`` (the model), ``generation``, ``window``, ``prefix`` and ``paged`` (the timed
calls), ``fidelity`` (outputs vs the baseline), ``predict`` (the memory model), ``export``
(settings to paste) and ``engine`` (the interface kvopt's core uses).
"""
