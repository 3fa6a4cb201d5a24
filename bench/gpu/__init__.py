"""The one prepared GPU check (`bash bench/gpu/check.sh`) and its Python half."""
