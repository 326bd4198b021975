# mspr_ros: two commands do everything on a fresh machine (see README):
#   make test   set up .venv (first time a few minutes, then seconds) and run the test suite
#   make demo   set up .venv, render a world, train, record a bag, replay it through the node, report
# Only the package registries and the repo's own files are used; nothing is installed by hand.

VENV   := $(CURDIR)/.venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
DEPS   := requirements/lock.txt setup.py training/setup.py tools/setup_venv.sh \
          $(wildcard tools/wheel_ros/tf2_msgs/*/*) tools/wheel_ros/tf2_msgs/CMakeLists.txt \
          $(wildcard launch/* config/* rviz/*)

# The ROS 2 wheels need no sourcing; these make the ros2 CLI find our package (as colcon would) and
# let images use Fast DDS shared memory (config/fastdds_images.xml says why and what it measured).
export AMENT_PREFIX_PATH := $(VENV)
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_images.xml
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export PYTHONUNBUFFERED := 1

PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: all venv test demo lint benchmarks figures clean distclean

all: test

$(STAMP): $(DEPS)
	bash tools/setup_venv.sh
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m mspr_training.demo $(DEMO_ARGS)

lint: $(STAMP)
	$(PY) -m flake8 mspr_ros training launch test benchmarks setup.py

benchmarks: $(STAMP)
	$(PY) benchmarks/run_all.py

# The tables of benchmarks/README.md and README.md from benchmarks/results/*.json (standard library
# only, so no .venv needed); FIGURES_ARGS=--check compares without writing.
FIGURES_ARGS ?=
figures:
	python3 benchmarks/figures.py $(FIGURES_ARGS)

clean:
	rm -rf build install log .pytest_cache artifacts/demo

distclean: clean
	rm -rf $(VENV) artifacts
