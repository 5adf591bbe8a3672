"""Looking inside a trained network: what `netc inspect` draws.

One module per picture, each a function from a loaded model (and images) to a
PNG written atomically:

- `source`: a run directory → graph, analysis, PyTorch module, preprocessing,
  labels, history; pictures and data sets → network inputs.
- `activations`: every layer's output for a batch, by layer name.
- `tiles`: the one matplotlib grid renderer the pictures share.
- `feature_maps`, `filters`: a layer's outputs for one image; conv weights.
- `fields`: receptive-field boxes from the analysis, a gradient probe that
  measures the same thing, the overlay picture.
- `top_activations`: the input crops (at the receptive field) that excite a
  channel most.
- `gradcam`: class maps (Grad-CAM) placed on the input by the receptive field.
- `curves`: metrics.jsonl as training curves.
- `onnx_outputs`: intermediate outputs of an exported ONNX model.
- `report`: all of it as one offline HTML page.
- `command`: the `netc inspect` command line.

matplotlib is an optional dependency (`pip install netc[inspect]`); the
modules import it only when they draw.
"""
