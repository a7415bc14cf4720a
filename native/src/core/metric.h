// Similarity metrics for retrieval.
#pragma once
#include <cstdint>
#include <string>

namespace gt {

// ip: inner product, higher is better. cosine: dot / (|q| |r|), higher is better; a
// zero vector has cosine 0 with everything. l2: squared Euclidean distance, lower is
// better.
enum class Metric : int { IP = 0, Cosine = 1, L2 = 2 };

const char* metric_name(Metric m);
bool parse_metric(const std::string& name, Metric* out);
inline bool higher_is_better(Metric m) { return m != Metric::L2; }

}  // namespace gt
