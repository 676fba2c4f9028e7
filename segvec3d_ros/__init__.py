"""segvec3d: 3D instance segmentation and language grounding for ROS 2.

The method is SegVec3D (arXiv 2507.09459).

The subpackages follow the data flow: io (clouds in and out) -> data (synthetic scenes) ->
segmentation (segmenters, clustering) -> grounding (shared 3D-text space) -> nodes (ROS glue).
Everything except `nodes` is ROS-free.
"""
