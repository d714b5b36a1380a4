"""Exactness and property suite of the QP/projection family: MGDA ('none'
and 'l2'), UPGrad, DualProj, CAGrad (c = 0.4, 0.5, 1.5).

The tests, their tolerances and profiles are described in
``tests/property_suite.py``; the references in ``tests/reference_solvers.py``;
the matrices in ``tests/matrix_samplers.py``. The closed-form family lives in
``tests/test_properties_closed_form.py`` (a separate module so that
pytest-xdist runs the two families, and compiles their methods, in
parallel).
"""

import exactness_harness
import property_suite

globals().update(property_suite.make_tests(exactness_harness.QP_KEYS))
