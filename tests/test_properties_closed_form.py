"""Exactness and property suite of the closed-form and bargaining family:
linear scalarization, IMTL-G, Aligned-MTL (min, median, rmse; eigh and
SVD paths), ConFIG, Nash-MTL (without and with clipping), FairGrad
(α = 1, 2, 0.5).

The tests, their tolerances and profiles are described in
``tests/property_suite.py``; see also ``tests/test_properties.py``.
"""

import exactness_harness
import property_suite

globals().update(property_suite.make_tests(exactness_harness.CLOSED_FORM_KEYS))
