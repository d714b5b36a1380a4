"""The multi-task methods, one file per method (or per tight family).

Each file holds a method's weighting function (the Gramian, or the losses,
in; coefficients out), its Optax factory, and in its docstring the paper's
equations and the readings we had to make. The weighting is named
``<method>_weights`` where the factory has the method's name (it is
``mtl_optax.weightings.<method>`` in the public namespace). Below them,
``_core.py`` holds what every method shares: the state
(``AggregatorState``), ``gramian_direction`` (Gramian, weighting, weighted
sum), ``_build`` (validation and the NaN/Inf skip) and the loss-based
methods' machinery; the exact solvers are ``mtl_optax.active_set``, the
Gramian helpers ``mtl_optax.gramians``. ``mtl_optax.registry`` lists the
methods by name.

==========================  ==============================================
file                        methods
==========================  ==============================================
``linear_scalarization``    ``linear_scalarization``
``aligned_mtl``             ``aligned_mtl`` (Aligned-MTL)
``mgda``                    ``mgda`` (MGDA; MGDA-UB at the representation)
``pcgrad``                  ``pcgrad`` (PCGrad)
``mamg``                    ``mamg`` (MAMG)
``imtl``                    ``imtl_g`` (IMTL-G)
``imtl_hybrid``             ``imtl`` (IMTL: IMTL-L's scales + IMTL-G)
``cagrad``                  ``cagrad`` (CAGrad)
``bargaining``              ``nash_mtl`` (Nash-MTL), ``fairgrad`` (FairGrad)
``dual_cone``               ``upgrad`` (UPGrad), ``dualproj`` (DualProj)
``gradvac``                 ``gradvac`` (GradVac)
``conflict_free``           ``conflict_free`` (ConFIG)
``random_weighting``        ``random_weighting`` (RLW)
``ema_weighting``           ``ema_weighting`` (CR-MOGM's smoothing)
``graddrop``                ``graddrop`` (GradDrop)
``uncertainty_weighting``   ``uncertainty_weighting``
``dwa``                     ``dwa`` (DWA)
``gradnorm``                ``gradnorm`` (GradNorm)
``famo``                    ``famo`` (FAMO)
``geometric_mean``          ``geometric_mean`` (GLS)
``moco``                    ``moco`` (MoCo)
``excess_mtl``              ``excess_mtl`` (ExcessMTL)
``modo``                    ``modo`` (MoDo)
``sdmgrad``                 ``sdmgrad`` (SDMGrad)
``stch``                    ``stch`` (STCH)
``db_mtl``                  ``db_mtl`` (DB-MTL)
==========================  ==============================================

The layering has no import circle: ``gramians``, ``active_set``,
``diagnostics`` < ``methods._core`` < ``methods.<method>`` <
``registry``, ``weightings`` (the public namespace of the weighting
functions) and ``mtl_optax``.
"""
