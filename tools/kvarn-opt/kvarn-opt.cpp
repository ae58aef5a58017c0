// kvarn-opt: mlir-opt with the kvarn dialect and every kvarn pass registered.
#include "kvarn/Compiler/Passes.h"
#include "kvarn/Dialect/KernelBuilder.h"

#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::DialectRegistry registry;
  kvarn::dialect::registerKvarnDialects(registry);
  kvarn::compiler::registerKvarnPasses();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "kvarn optimizer driver\n", registry));
}
