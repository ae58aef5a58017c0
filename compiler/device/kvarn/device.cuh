// kvarn device library: the header every generated kernel includes.
#pragma once

#include "kvarn/common.cuh"
#include "kvarn/append.cuh"
#include "kvarn/decode.cuh"
#include "kvarn/flush.cuh"
