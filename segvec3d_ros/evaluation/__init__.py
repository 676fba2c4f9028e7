"""Instance segmentation metrics, evaluation datasets and the `segvec3d evaluate` report."""
