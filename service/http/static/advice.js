// service/advice.py's rules for the page: which served model has trained weights, and what to say about one
// with random weights. Kept in step with the Python by tests/accuracy/test_advice.py (both run the same cases).
"use strict";
(function (root) {
  const RANDOM = "random", UNKNOWN = "unknown";
  const RANDOM_WARNING = "this model has random weights: its predictions are meaningless";
  const VARIANT_SUFFIXES = ["_int8", "_fp16", "_ov", "_pt", "_trt"];
  const hasTrainedWeights = (w) => Boolean(w) && w !== RANDOM && w !== UNKNOWN;
  const isVariant = (name) => VARIANT_SUFFIXES.some((s) => name.endsWith(s));

  // weights: {model name: its /models "weights" field}
  function trainedAlternative(weights) {
    const names = Object.keys(weights).filter((n) => hasTrainedWeights(weights[n]));
    names.sort((a, b) => (Number(isVariant(a)) - Number(isVariant(b))) || (a < b ? -1 : a > b ? 1 : 0));
    return names.length ? names[0] : null;
  }

  function randomWeightsWarning(model, weights) {
    if (weights[model] !== RANDOM) return null;
    const other = trainedAlternative(weights);
    return other === null
      ? `${RANDOM_WARNING}; export trained weights (python -m export --weights DEFAULT or a checkpoint)`
      : `${RANDOM_WARNING}; ${other} has trained weights: ?model=${other}`;
  }

  function preferredModel(initial, weights) {
    if (initial !== null && initial !== undefined && weights[initial] !== RANDOM) return initial;
    return trainedAlternative(weights) || initial;
  }

  root.imgserveAdvice = { trainedAlternative, randomWeightsWarning, preferredModel };
})(typeof window !== "undefined" ? window : globalThis);
