"""netc: a ConvNet model compiler and inference server.

import netc
net = netc.load("resnet18")            # a file path or a zoo name
net.analysis.params, net.analysis.macs
for layer in net.analysis.layers: ...
"""

from netc.compiler.network import Network, load, load_string

__all__ = ["Network", "load", "load_string"]
__version__ = "0.1.0"
