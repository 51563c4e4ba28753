#pragma once
// The `tokens` data format: JSONL, one example a line, already tokenized:
//   {"input_ids": [1, 15043, 29892], "labels": [-100, 15043, 29892]}
// `labels` is optional (default: input_ids, loss on every token) and aligned with input_ids as
// in transformers: position t's label is the token the model should predict after reading
// tokens 0..t-1 (the shift happens in the loss). -100 means "no loss here".

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace shardtune {

struct Example {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> labels;  // same length; -100 = ignored
  // Packed sequences only (empty otherwise): each token's position within its own document and
  // the document's index in the sequence. Attention never crosses documents.
  std::vector<int64_t> position_ids;
  std::vector<int64_t> document_ids;
  // Sequence classification only: the class index (labels is then all -100).
  int64_t class_label = -1;
  // Sentence pairs only (else empty): BERT's segment of each token, 0 for "[CLS] a [SEP]" and 1
  // for "b [SEP]" (the token_type_ids of transformers' tokenizers).
  std::vector<int64_t> token_type_ids = {};

  // Next-token targets this example contributes: labels[1:] that are not -100.
  int64_t target_tokens() const;
};

struct TokenDataset {
  std::vector<Example> examples;
  int64_t truncated = 0;  // examples cut to max_seq_len
  // classification and ner: the label (or tag) names, index = id, and how often each occurs.
  std::vector<std::string> label_names;
  std::vector<int64_t> label_counts;
};

// A padded micro-batch: right padding with `pad_id`, labels -100 and attention_mask 0 there.
struct Batch {
  at::Tensor input_ids;       // (B, S) int64
  at::Tensor labels;          // (B, S) int64
  at::Tensor attention_mask;  // (B, S) int64
  at::Tensor position_ids;    // (B, S) int64, packed batches only (else undefined)
  at::Tensor document_ids;    // (B, S) int64, packed batches only; -1 on padding
  at::Tensor class_labels;    // (B,) int64: sequence classification's classes, -100 where none
  at::Tensor token_type_ids;  // (B, S) int64: the examples' segments (0 where they give none)
  int64_t input_tokens = 0;   // non-padding tokens
};
Batch Collate(const std::vector<const Example*>& examples, int64_t pad_id);

// The addresses of `examples`, in order (what Collate takes).
std::vector<const Example*> Pointers(const std::vector<Example>& examples);

// Packs examples, in order, into sequences of at most `max_len` tokens (greedy: a document that
// does not fit starts the next sequence). The first token of every document gets label -100, so
// no document is trained to follow the one before it.
std::vector<Example> PackExamples(const std::vector<Example>& examples, int64_t max_len);
// The packing of documents of these lengths, as PackExamples does it: sequence k holds documents
// [starts[k], starts[k + 1]); the last entry is lengths.size() ({0} when there are none).
std::vector<int64_t> PackBoundaries(const std::vector<int64_t>& lengths, int64_t max_len);
// Appends `document` to a packed `sequence` as its document number `index`.
void AppendToPacked(Example& sequence, const Example& document, int64_t index);

// Splits off the last `fraction` of a seeded permutation as validation (at least one example
// when fraction > 0 and there are two or more). Deterministic for a seed.
void SplitValidation(std::vector<Example>& train, std::vector<Example>& validation, double fraction, uint64_t seed);
// SplitValidation's choice for n examples: true for each one held out for validation.
std::vector<bool> ValidationMask(int64_t n, double fraction, uint64_t seed);

// Reorders `order` so that each run of `group` consecutive entries is sorted by length, longest
// first (the order of the runs stays): batches cut from it hold examples of similar length.
void GroupByLength(std::vector<int64_t>& order, const std::vector<Example>& examples, int64_t group);
// The same by the examples' lengths (lengths[i]: example i's tokens).
void GroupByLength(std::vector<int64_t>& order, const std::vector<int64_t>& lengths, int64_t group);

// The order of examples in `epoch`: a permutation seeded by (seed, epoch), or 0..n-1.
std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);

}  // namespace shardtune
