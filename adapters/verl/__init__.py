"""sae_verl: turns sae_core's estimators on inside veRL (algorithm.adv_estimator=sae).

Empty for now: the veRL adapter is its own issue. Until then this package only reserves the name.
"""
