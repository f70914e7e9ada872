"""Stage 2: classifier methods on stored frozen-backbone features, and their selection.

methods (the METHODS name table: joint, ncm, tau_norm, crt, lws, learned_tau, cosine, and
later's logit_adjust, balanced_softmax, label_aware_smoothing, wb, disalign),
heads (tau-normalisation, NCM, predictors; numpy), training (the torch loop of the
trained methods), select (accuracy by shot group, balanced train score, best config),
types (FeatureSplit, StageOneClassifier), store (the Arrow feature files).
Importing the package loads numpy and torch only; submodules are imported on use.
"""
from lt_dist.stage2.heads import ncm_logits, tau_normalize

__all__ = ["ncm_logits", "tau_normalize"]
