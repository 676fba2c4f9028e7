"""The launch file, params file and RViz config agree with the package (without launch_ros)."""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from segvec3d_ros import names
from segvec3d_ros.cli.common import pipeline_config
from segvec3d_ros.ros.launch_arguments import (CYCLONE_DDS_PROFILE, FAST_DDS_PROFILE,
                                               SENSOR_PARAMS, parameter_overrides,
                                               params_file_for, profile_environment)
from segvec3d_ros.segmentation.learned import load_network

REPO = Path(__file__).resolve().parents[1]
RCLPY_OWN_PARAMETERS = {'use_sim_time', 'start_type_description_service'}
LAUNCH_FILE = REPO / 'launch' / 'segvec3d.launch.py'
PARAMS_FILE = REPO / 'config' / 'segvec3d.yaml'
LIDAR_PARAMS_FILE = REPO / 'config' / 'lidar.yaml'
LIDAR_INDOOR_PARAMS_FILE = REPO / 'config' / 'lidar_indoor.yaml'
SHIPPED_PARAMS_FILES = [PARAMS_FILE, LIDAR_PARAMS_FILE, LIDAR_INDOOR_PARAMS_FILE]
RVIZ_FILE = REPO / 'config' / 'segvec3d.rviz'


def _launch_calls(name: str) -> list[ast.Call]:
    tree = ast.parse(LAUNCH_FILE.read_text())
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, 'id', getattr(node.func, 'attr', None)) == name]


def _module_constants() -> dict[str, str]:
    """The launch file's string constants, its own and those it imports from names.py."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    constants = {node.targets[0].id: node.value.value for node in tree.body
                 if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == 'segvec3d_ros.names':
            constants.update({alias.name: getattr(names, alias.name) for alias in node.names})
    return constants


def _keyword(call: ast.Call, name: str) -> str | None:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
        if keyword.arg == name and isinstance(keyword.value, ast.Name):
            return _module_constants().get(keyword.value.id)
    return None


def _console_scripts() -> set[str]:
    tree = ast.parse((REPO / 'setup.py').read_text())
    scripts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and ' = ' in node.value:
            scripts.add(node.value.split(' = ')[0].strip())
    return scripts


def test_launch_declares_the_documented_arguments():
    declared = {call.args[0].value for call in _launch_calls('DeclareLaunchArgument')}
    assert declared == {'namespace', 'points_topic', 'device', 'sensor', 'params_file',
                        'large_clouds_profile', 'rviz'}


def test_launch_arguments_default_to_the_params_file():
    # An argument with a non-empty default would override the params file even when the user
    # never gave it: `params_file:=my.yaml` with `device: cpu` ran on `auto`.
    defaults = {call.args[0].value: call.keywords[0].value for call in
                _launch_calls('DeclareLaunchArgument')}
    assert isinstance(defaults['device'], ast.Constant) and defaults['device'].value == ''
    overrides = _launch_calls('parameter_overrides')
    assert len(overrides) == 1
    assert [k.value for k in overrides[0].args[0].keys] == ['device']


def test_a_launch_argument_overrides_only_when_given():
    assert parameter_overrides({'device': ''}) == {}
    assert parameter_overrides({'device': 'cpu'}) == {'device': 'cpu'}


def test_the_sensor_chooses_the_shipped_params_file_unless_one_is_given():
    assert params_file_for('camera', '', '/share/config') == '/share/config/segvec3d.yaml'
    assert params_file_for('lidar', '', '/share/config') == '/share/config/lidar.yaml'
    assert (params_file_for('lidar_indoor', '', '/share/config')
            == '/share/config/lidar_indoor.yaml')
    assert params_file_for('lidar', '/mine.yaml', '/share/config') == '/mine.yaml'
    with pytest.raises(ValueError, match='sensor'):
        params_file_for('radar', '', '/share/config')
    # The launch file resolves it: no default params file of its own.
    defaults = {call.args[0].value: call.keywords[0].value for call in
                _launch_calls('DeclareLaunchArgument')}
    assert defaults['params_file'].value == '' and defaults['sensor'].value == 'camera'
    assert len(_launch_calls('params_file_for')) == 1


def test_the_lidar_preset_runs_the_range_image_segmenter():
    config = pipeline_config(LIDAR_PARAMS_FILE)
    assert config.segmenter == 'range_image' and config.up_axis == 'z'
    assert config.min_range > 0 and config.max_instances < 1000


def test_the_indoor_lidar_preset_runs_the_bundled_lidar_network():
    config = pipeline_config(LIDAR_INDOOR_PARAMS_FILE)
    assert config.segmenter == 'segvec3d' and config.model_path.startswith('package://')
    network = load_network(config.model_path, 'cpu')
    assert network.config.voxel_size == config.voxel_size
    assert network.config.use_rgb     # the return strength stands in for colour


@pytest.mark.parametrize('environ, expected', [
    ({}, {'FASTRTPS_DEFAULT_PROFILES_FILE': '/share/config/fastdds_large_clouds.xml'}),
    ({'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp'},
     {'FASTRTPS_DEFAULT_PROFILES_FILE': '/share/config/fastdds_large_clouds.xml'}),
    ({'FASTRTPS_DEFAULT_PROFILES_FILE': '/mine.xml'}, {}),
    ({'FASTDDS_DEFAULT_PROFILES_FILE': '/mine.xml'}, {}),
    ({'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'},
     {'CYCLONEDDS_URI': 'file:///share/config/cyclonedds_large_clouds.xml'}),
    ({'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp', 'CYCLONEDDS_URI': 'file:///mine.xml'}, {}),
    ({'RMW_IMPLEMENTATION': 'rmw_zenoh_cpp'}, {}),
])
def test_the_large_cloud_profile_is_applied_unless_the_user_chose(environ, expected):
    assert profile_environment('true', environ, '/share/config') == expected
    assert profile_environment('false', environ, '/share/config') == {}


def test_the_shipped_profiles_exist_and_parse():
    for name in (FAST_DDS_PROFILE, CYCLONE_DDS_PROFILE):
        ElementTree.parse(REPO / 'config' / name)


def test_a_misspelt_launch_flag_is_an_error_naming_it():
    with pytest.raises(ValueError, match='large_clouds_profile'):
        profile_environment('ture', {}, '/share/config')


def test_every_executable_the_launch_file_names_exists():
    scripts = _console_scripts()
    nodes = [c for c in _launch_calls('Node') if _keyword(c, 'package') == 'segvec3d_ros']
    assert {_keyword(c, 'executable') for c in nodes} == {'segmentation_node', 'query_node'}
    installed = REPO / '.ws' / 'install' / 'segvec3d_ros' / 'lib' / 'segvec3d_ros'
    for call in nodes:
        executable = _keyword(call, 'executable')
        assert executable in scripts
        if installed.is_dir():
            assert os.access(installed / executable, os.X_OK), executable
    assert {'segvec3d-up', 'segvec3d-play', 'segvec3d-bag', 'segvec3d'} <= scripts


def test_every_file_the_launch_file_names_exists_and_is_installed():
    named = [c for c in _launch_calls('PathJoinSubstitution')]
    paths = []
    for call in named:
        parts = [e.value for e in call.args[0].elts if isinstance(e, ast.Constant)]
        paths.append(REPO.joinpath(*parts))
    assert RVIZ_FILE in paths
    # The params files the sensor argument chooses are named in launch_arguments.
    paths += [REPO / 'config' / name for name in SENSOR_PARAMS.values()]
    assert PARAMS_FILE in paths and LIDAR_PARAMS_FILE in paths
    setup_text = (REPO / 'setup.py').read_text()
    for path in paths:
        assert path.is_file(), path
        assert f"glob('{path.parent.name}/*" in setup_text  # installed to share/


def test_rviz_config_shows_the_outputs_and_highlights_a_clicked_object():
    config = yaml.safe_load(RVIZ_FILE.read_text())
    displays = {d['Name']: d for d in config['Visualization Manager']['Displays']}
    cloud = displays['Labeled points']
    assert cloud['Topic']['Value'] == 'segvec3d/labeled_points'
    assert cloud['Channel Name'] == 'label'
    assert displays['Instances']['Topic']['Value'] == 'segvec3d/markers'
    selected = displays['Selected object']
    assert selected['Class'] == 'rviz_default_plugins/PointCloud2'
    assert selected['Topic']['Value'] == names.SELECTED_POINTS_TOPIC
    assert selected['Size (Pixels)'] > cloud['Size (Pixels)']
    tools = {t['Class']: t for t in config['Visualization Manager']['Tools']}
    publish_point = tools['rviz_default_plugins/PublishPoint']
    assert publish_point['Topic']['Value'] == names.CLICKED_POINT_TOPIC


@pytest.fixture(scope='module')
def declared_parameters() -> dict[str, set[str]]:
    """Parameter names as the real nodes declare them (rclpy, in this process)."""
    rclpy = pytest.importorskip('rclpy')
    from segvec3d_ros.ros.query_node import QueryNode
    from segvec3d_ros.ros.segmentation_node import SegmentationNode

    rclpy.init()
    try:
        declared = {}
        for node_class in (SegmentationNode, QueryNode):
            node = node_class()
            declared[node.get_name()] = set(node._parameters) - RCLPY_OWN_PARAMETERS
            node.destroy_node()
        return declared
    finally:
        rclpy.try_shutdown()


@pytest.mark.parametrize('params_file', SHIPPED_PARAMS_FILES)
def test_params_file_sets_exactly_the_declared_parameters(declared_parameters, params_file):
    sections = yaml.safe_load(params_file.read_text())
    assert set(sections) == {f'/**/{name}' for name in declared_parameters}
    for name, declared in declared_parameters.items():
        keys = set(sections[f'/**/{name}']['ros__parameters'])
        assert keys - declared == set(), f'{name}: keys that are not parameters'
        assert declared - keys == set(), f'{name}: parameters missing from the params file'


@pytest.mark.parametrize('params_file', SHIPPED_PARAMS_FILES)
def test_every_parameter_in_the_params_file_has_a_comment(params_file):
    for line in params_file.read_text().splitlines():
        if re.match(r'^\s{4}\w+:', line):
            assert '#' in line, line


def test_readme_documents_every_parameter(declared_parameters):
    readme = (REPO / 'README.md').read_text()
    for name, declared in declared_parameters.items():
        missing = {p for p in declared if f'| `{p}` |' not in readme}
        assert not missing, f'{name}: parameters missing from README: {sorted(missing)}'


def test_ci_runs_the_readme_test_command():
    readme = (REPO / 'README.md').read_text()
    ci = (REPO / '.ci' / 'run').read_text()
    assert 'make test' in readme and 'make test' in ci
