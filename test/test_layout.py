"""The package layout shows the architecture: layers that import only downwards, no import
cycle, and ROS in one folder. Every import counts, lazy and TYPE_CHECKING ones too: they hide
a dependency, they do not remove it."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'segvec3d_ros'
# Bottom to top (docs/ARCHITECTURE.md). A module may import its own layer and those below.
LAYERS = (
    ('config', 'names', 'cloud', 'colors'),
    ('io', 'data'),
    ('model',),
    ('segmentation',),
    ('instances',),
    ('grounding',),
    ('pipeline', 'render', 'frame_flow', 'tracking', 'prompts'),
    ('training', 'evaluation', 'bench'),
    ('cli',),
    ('ros',),
)
ROS_IMPORTS = ('rclpy', 'launch', 'launch_ros', 'sensor_msgs', 'std_msgs', 'geometry_msgs',
               'visualization_msgs', 'diagnostic_msgs', 'rcl_interfaces', 'builtin_interfaces',
               'segvec3d_msgs')


def module_name(path: Path) -> str:
    """segvec3d_ros.a.b for segvec3d_ros/a/b.py (and for segvec3d_ros/a/b/__init__.py)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports() -> dict[str, set[str]]:
    """Every module of the package and the top-level names of everything it imports."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob('*.py'):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f'{node.module}.{alias.name}' for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[module_name(path)] = names
    return found


def package_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    found = imports()
    return {module: {name for name in names if name in found and name != module}
            for module, names in found.items()}


def layer(module: str) -> int:
    """The layer index of a package module (the package's own __init__ is the bottom)."""
    parts = module.split('.')
    if len(parts) == 1:
        return 0
    return next(i for i, names in enumerate(LAYERS) if parts[1] in names)


def test_every_module_belongs_to_a_layer():
    for module in package_graph():
        layer(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f'{module} -> {target}' for module, targets in package_graph().items()
                    for target in targets if layer(target) > layer(module))
    assert not upward, upward


def test_no_import_cycle():
    graph = package_graph()
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            assert state.get(target) != 1, ' -> '.join(path + [module, target])
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_ros_is_imported_in_one_folder_only():
    outside = sorted(f'{module}: {name}' for module, names in imports().items()
                     if not module.startswith('segvec3d_ros.ros')
                     for name in names if name.split('.')[0] in ROS_IMPORTS)
    assert not outside, outside


def test_the_segmentation_node_module_does_not_import_torch():
    # torch takes seconds to import: a Ctrl-C at start-up then lands inside it (the query node
    # needs it for the text encoder; the segmentation node only once it loads a grounding head).
    pytest.importorskip('rclpy')
    code = 'import sys, segvec3d_ros.ros.segmentation_node; print("torch" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == 'False', out.stderr


def test_the_learned_pipeline_runs_without_ros_and_without_open3d():
    # A GPU machine may have only CUDA torch: normals then come from SciPy, not Open3D.
    code = '''if True:
        import sys
        for name in ('open3d', 'rclpy', 'sensor_msgs', 'launch_ros'):
            sys.modules[name] = None        # any import of them fails
        sys.path.insert(0, 'test')
        from scenes import tabletop_points
        from segvec3d_ros.cloud import Cloud
        from segvec3d_ros.config import PipelineConfig
        from segvec3d_ros.pipeline import Pipeline
        xyz, rgb, _ = tabletop_points()
        result = Pipeline(PipelineConfig(segmenter='segvec3d')).process(Cloud(xyz, rgb))
        print(len(result.instances))
    '''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == '3'
