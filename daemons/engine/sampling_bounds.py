"""The ranges sampling values must lie in: shared by SamplingParams.validate (per request) and the
configuration's [sampling] check (at start). No numpy here: daemons.config imports this before a daemon
pins its threads, and importing numpy would start OpenBLAS's pool sized to every CPU."""

# Below this the logits divided by the temperature can overflow to inf and exp() gives NaN probabilities
# (5e-324 did); 1e-5 is greedy in all but name. Logits of finite float32 over 1e-5 stay finite in float64.
MIN_TEMPERATURE = 1e-5
MIN_REPETITION_PENALTY = 1e-3  # dividing float32 logits by less can overflow them to inf
MAX_TOP_K = 1 << 20
