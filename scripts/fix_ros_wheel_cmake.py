"""Point the ROS wheels' exported CMake include dirs at this interpreter's real paths.

The PyPI ROS 2 wheels were built under /opt/python/cp311-cp311 and their
*rosidl_generator_py*Export.cmake files name include dirs from that machine, which makes CMake's
generate step fail ("Imported target ... includes non-existent path"). Idempotent.
"""
import glob
import sys
import sysconfig

import numpy

BUILDER_PYTHON_INCLUDE = '/opt/python/cp311-cp311/include/python3.11'
BUILDER_NUMPY_INCLUDE = '/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include'


def main() -> int:
    replacements = {
        BUILDER_PYTHON_INCLUDE: sysconfig.get_paths()['include'],
        BUILDER_NUMPY_INCLUDE: numpy.get_include(),
    }
    pattern = f'{sys.prefix}/share/*/cmake/*rosidl_generator_py*Export*.cmake'
    fixed = 0
    for path in glob.glob(pattern):
        with open(path, encoding='utf-8') as f:
            text = f.read()
        new_text = text
        for old, new in replacements.items():
            new_text = new_text.replace(old, new)
        if new_text != text:
            with open(path, 'w', encoding='utf-8') as f:
                f.write(new_text)
            fixed += 1
    print(f'fixed {fixed} CMake export files under {sys.prefix}/share')
    return 0


if __name__ == '__main__':
    sys.exit(main())
