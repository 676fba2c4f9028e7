"""segvec3d: 3D instance segmentation and language grounding for ROS 2.

The method is SegVec3D (arXiv 2507.09459).

The layers, bottom to top: config and names -> io and data -> model -> segmentation ->
instances -> grounding -> pipeline -> training, evaluation, bench -> cli -> ros. Each imports
only its own layer and those below (docs/ARCHITECTURE.md); everything except `ros` is ROS-free.
"""
