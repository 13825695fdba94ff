"""What the framework adapters (sae_verl, sae_openrlhf) share; never imports a framework.

- `hooks`: run a patch on a module when it is imported (`on_import`);
- `translate`: a framework's settings as `compute_advantages` arguments, from the registry
  (options, the per-token data a rule reads, the choice of log-probs), and the idempotent wrap
  of a framework's function (`wrap_once`).
"""
