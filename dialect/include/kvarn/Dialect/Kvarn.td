// Top-level ODS file of the kvarn dialect.
include "kvarn/Dialect/KvarnOps.td"
