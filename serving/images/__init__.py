"""Pictures in, masks out: what the vision service does around a model's run.

A request's picture goes `decode` (bytes or pixels → float32 (C, H, W) in [0, 1])
→ `prepare` (the model's own preprocessing, as training did) → the model →
`scores` (probabilities; a dense score map back at the picture's own size, through
the affine maps between pixel centres in `geometry`) → `masks` (PNG answers and
mask files).
"""
