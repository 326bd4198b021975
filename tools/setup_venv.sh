#!/usr/bin/env bash
# Creates or refreshes .venv with everything mspr_ros needs, from the repo's own pinned files and the
# package registries only:
#   1. ROS 2 Kilted wheels, PyTorch and the rest, pinned in requirements/lock.txt;
#   2. mspr_ros and mspr_training, editable;
#   3. tf2_msgs, built locally with the rosidl generator wheels (no wheel exists), so /tf is real;
#   4. ROS 2's `ros2` command line (launch, run, topic, ...) from ../shared/vendor/ros2_launch when present;
#   4b. the real tf2_ros and bondpy from ../shared/vendor/ros2_tf2 when present;
#   5. the ament index pieces `ros2 launch`/`ros2 run` look for (console scripts in lib/mspr_ros).
# Idempotent: each step checks whether it is already done, so a second run takes seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
py="$venv/bin/python"
log="$venv/setup.log"
vendor="${MSPR_ROS2_VENDOR:-$root/../shared/vendor/ros2_launch}"

step() { printf '[setup] %s\n' "$*"; }
quiet() {  # run a command, keep its output in the log, show the tail only on failure
  if ! "$@" >>"$log" 2>&1; then
    echo "[setup] FAILED: $*  (last lines of $log follow)" >&2
    grep -v '^WARNING: Location' "$log" | tail -40 >&2
    exit 1
  fi
}

if [ ! -x "$py" ]; then
  step "creating $venv with $(command -v python3.11 || command -v python3)"
  "$(command -v python3.11 || command -v python3)" -m venv "$venv"
fi
: >"$log"

lock_sum=$(cat "$root/requirements/lock.txt" | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.lock-installed" 2>/dev/null)" != "$lock_sum" ]; then
  step "installing pinned requirements (ROS 2 wheels, torch, ...; first time ~2 min)"
  quiet "$venv/bin/pip" install --disable-pip-version-check -r "$root/requirements/lock.txt"
  rm -f "$venv/.tf2-built"
  echo "$lock_sum" >"$venv/.lock-installed"
fi

# Checked from / so that the repo root on sys.path cannot hide a broken editable install.
if ! (cd / && "$py" -c "import mspr_ros.model.config, mspr_training.data") 2>/dev/null \
   || [ "$(cat "$venv/.pkg-installed" 2>/dev/null)" != "$(cat "$root/setup.py" "$root/training/setup.py" | sha256sum | cut -c1-16)" ]; then
  step "installing mspr_ros and mspr_training (editable)"
  quiet "$venv/bin/pip" install --disable-pip-version-check --no-deps --no-build-isolation -e "$root" -e "$root/training"
  cat "$root/setup.py" "$root/training/setup.py" | sha256sum | cut -c1-16 >"$venv/.pkg-installed"
fi

# The rosidl generator wheels' CMake exports name include paths of the machine they were built on.
patch_cmake_exports() {
  local inc npinc
  inc=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  npinc=$("$py" -c "import numpy; print(numpy.get_include())")
  for f in "$venv"/share/*/cmake/*.cmake; do
    sed -i "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$npinc#g; s#/opt/python/cp311-cp311/include/python3.11#$inc#g" "$f"
  done
}

if [ ! -f "$venv/.tf2-built" ] || ! "$py" -c "from tf2_msgs.msg import TFMessage" 2>/dev/null; then
  step "building tf2_msgs locally (rosidl generators, ~15 s)"
  patch_cmake_exports
  build=$(mktemp -d)
  quiet cmake -S "$root/tools/wheel_ros/tf2_msgs" -B "$build" -DCMAKE_INSTALL_PREFIX="$venv" \
    -DCMAKE_PREFIX_PATH="$venv" -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF
  quiet cmake --build "$build" -j2
  quiet cmake --install "$build"
  rm -rf "$build"
  "$py" -c "from tf2_msgs.msg import TFMessage" || { echo "[setup] tf2_msgs does not import" >&2; exit 1; }
  touch "$venv/.tf2-built"
fi

if [ -x "$vendor/install.sh" ] || [ -f "$vendor/install.sh" ]; then
  if ! "$py" -c "import launch, launch_ros, ros2cli, ros2launch" 2>/dev/null; then
    step "installing ROS 2's ros2 command line from $vendor (~40 s)"
    patch_cmake_exports
    quiet bash "$vendor/install.sh" "$venv"
  fi
else
  step "no $vendor: skipping the ros2 command line (tests that need it are skipped with the reason)"
fi

# The real tf2_ros (C++ tf2 core, tf2_py) and bondpy, built from upstream sources; no wheel exists.
# install.sh exits at once when they already import, and rebuilds the full upstream tf2_msgs when the
# subset above has overwritten it (its LookupTransform action loses its type support then).
tf2_vendor="${MSPR_TF2_VENDOR:-$root/../shared/vendor/ros2_tf2}"
if [ -f "$tf2_vendor/install.sh" ]; then
  if ! "$py" -c "import tf2_ros, bondpy.bondpy; from tf2_msgs.action import LookupTransform" 2>/dev/null; then
    step "building the real tf2_ros and bondpy from $tf2_vendor (~40 s)"
  fi
  patch_cmake_exports
  quiet bash "$tf2_vendor/install.sh" "$venv"
else
  step "no $tf2_vendor: skipping the real tf2_ros and bondpy (tests that need them are skipped with the reason)"
fi

# What `ros2 run` / `ros2 launch` need to find the package, as colcon would lay it out.
mkdir -p "$venv/lib/mspr_ros" "$venv/share/ament_index/resource_index/packages" "$venv/share/mspr_ros"
for exe in localizer; do
  [ -e "$venv/bin/$exe" ] && ln -sf "$venv/bin/$exe" "$venv/lib/mspr_ros/$exe"
done
touch "$venv/share/ament_index/resource_index/packages/mspr_ros"
ln -sf "$root/package.xml" "$venv/share/mspr_ros/package.xml"
# One link per file, as `colcon build --symlink-install` lays it out: ros2launch searches the share
# folder with os.walk, which does not descend into linked directories.
for d in launch config rviz; do
  rm -rf "$venv/share/mspr_ros/$d"
  mkdir -p "$venv/share/mspr_ros/$d"
  for f in "$root/$d"/*; do
    [ -f "$f" ] && ln -sf "$f" "$venv/share/mspr_ros/$d/$(basename "$f")"
  done
done
step "ready: $venv"
