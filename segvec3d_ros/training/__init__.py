"""Training of the SegVec3D network on the repo's own synthetic depth scenes."""
