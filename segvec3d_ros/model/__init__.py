"""SegVec3D: the graph-attention instance-embedding network, its loss, clustering and export."""
