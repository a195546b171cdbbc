#!/bin/sh
echo "bazel coverage needs remote_coverage_tools, which is not available offline" >&2
exit 1
