"""``python -m s4kit.run train CONFIG [key=value ...]``: the torchrun entry point.

    torchrun --nproc_per_node 4 -m s4kit.run train pascal/prcl data.root=/data/VOC2012 \
        model.pretrained=/weights/resnet101-63fe2227.pth

Same arguments and behaviour as the ``s4kit`` command (see ``s4kit.cli``).
"""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
