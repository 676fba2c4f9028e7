"""`segvec3d bench`: per-stage timings and peak memory of the pipeline, written as a report.

ROS-free: a frame goes through decode -> Pipeline.process -> encode exactly as in the node, minus
DDS (test/test_throughput.py measures the node over DDS; its figures join the report).
"""
