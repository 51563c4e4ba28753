#pragma once
// Runs one piece of a model (a "unit": the embedding, a decoder layer, the head) as a single
// node of the autograd graph, so that the ZeRO engine sees exactly when a unit's forward and
// backward happen: it gathers the unit's parameters just before each (stage 3), and issues the
// unit's gradient reduction the moment its backward is done, overlapping the backward of the
// units before it.
//
// With recompute (activation checkpointing) the forward keeps only the unit's input and
// recomputes the unit inside backward; otherwise the forward keeps its inner graph for backward
// (at stage 3 the engine gathers the unit's parameters again into the storage that graph holds).

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "sharding/zero_engine.h"

namespace shardtune {

using UnitCompute = std::function<at::Tensor(const at::Tensor& input, const UnitParameters& params)>;

// `input` is the unit's input (hidden states, or token ids for the embedding). `units` lists
// the units whose parameters `compute` uses; `use` says whether it only looks rows of them up.
// Outside grad mode this simply computes.
at::Tensor ApplyUnits(ZeroEngine& engine, const std::vector<int>& units, const at::Tensor& input, UnitCompute compute,
                      UnitUse use = UnitUse::kCompute);

// Forgets unit calls whose backward never ran (a step abandoned by an exception).
void DropPendingUnitCalls();

}  // namespace shardtune
