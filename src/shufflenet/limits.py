"""Every limit on untrusted input, in one place (documented together in docs/limits.md).

Each is checked before the work it limits: sizes are read from headers and refused before any
buffer of that size exists; streams are copied with a cap. Every one is far above what a ShuffleNet
file or bundle needs (the largest tensor of any variant is 8 MB, the largest bundle ~40 MB).
"""

from __future__ import annotations

#: decoded source image: Pillow's own bomb threshold (~ a 9459 x 9459 image), as an error
MAX_PIXELS = 89_478_485
#: the image after the resize step (shorter side to 256 allows strips up to 1:512, 100 MB of RGB):
#: refused before resizing, so a 143-byte 20000x1 PNG cannot become a 5 GB buffer
MAX_RESIZED_PIXELS = 1 << 25
#: a download whose size is not published (torchvision's checkpoints): 30x the largest one
MAX_UNSIZED_DOWNLOAD_BYTES = 1 << 30
#: seconds for one fetch, all mirrors and retries together (a byte every few seconds never ends
#: a per-read timeout; this does)
DOWNLOAD_DEADLINE_S = 1800
#: one tensor (a weights entry, an initializer, external data, a test-data .pb, a .npy member)
MAX_TENSOR_BYTES = 256 << 20
#: a .onnx file, read whole (protobuf's own ceiling; external data is read per tensor)
MAX_MODEL_BYTES = 2 << 30
#: all tensors of one weights file together
MAX_WEIGHTS_BYTES = 1 << 30
#: nested containers in a pickle or JSON document (a state dict needs 3, JSON labels 1)
MAX_NESTING = 64
#: one archive member, and all members together, unpacked
MAX_MEMBER_BYTES = 512 << 20
MAX_UNPACKED_BYTES = 1 << 30
#: members in one archive (a bundle has a model and a few test sets)
MAX_MEMBERS = 10_000
#: a text file read whole (labels, label files, run configs)
MAX_TEXT_BYTES = 64 << 20

__all__ = [name for name in dir() if name.isupper()]
