#!/bin/bash
# pytest comes from the base image (python3-pytest): containers cannot reach PyPI.
python3 -m pytest "$TEST_DIR/test_outputs.py" -rA
