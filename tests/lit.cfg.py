# lit configuration of the kvarn test suite (dialect round trips, verifier errors, passes).
import os
import lit.formats
from lit.llvm import llvm_config

config.name = "kvarn"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]
config.test_source_root = os.path.join(os.path.dirname(__file__), "lit")
config.test_exec_root = os.path.join(config.kvarn_obj_root, "tests", "lit")
config.excludes = []
llvm_config.use_default_substitutions()
llvm_config.with_environment("PATH", config.kvarn_tools_dir, append_path=True)
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
tools = ["kvarn-opt", "kvarn-tune", "FileCheck", "not", "count"]
llvm_config.add_tool_substitutions(tools, [config.kvarn_tools_dir, config.llvm_tools_dir])
