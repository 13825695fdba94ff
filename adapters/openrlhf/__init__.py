"""sae_openrlhf: turns sae_core's estimators on inside OpenRLHF (--algo.advantage.estimator sae).

Empty for now: the OpenRLHF adapter is its own issue. Until then this package only reserves the name.
"""
