"""The axes shared by several formula families, each defined once: its value, its scale for the tolerance, its
gradient and its variants for the diagnosis.

- :mod:`.aggregation` - the four token aggregations (``agg=`` / ``mode=``) and the masking bugs around them;
- :mod:`.ppo` - the PPO clip (bounds, dual clip, log-ratio clamp), its kinks and its objective variants;
- :mod:`.kl` - the KL estimators k1/k2/k3, their clamps and sign mistakes;
- :mod:`.sigmoid` - the log-sigmoid of the pairwise losses and its naive form;
- :mod:`.groups` - groups of samples per prompt (their scores and sizes) and returns-to-go, for the critic-free
  advantages and DAPO's shaping;
- :mod:`.composed` - variants composed over several axes (objective x clamp x aggregation x sign).
"""
