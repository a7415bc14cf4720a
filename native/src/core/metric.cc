#include "metric.h"

namespace gt {

const char* metric_name(Metric m) {
  switch (m) {
    case Metric::IP: return "ip";
    case Metric::Cosine: return "cosine";
    case Metric::L2: return "l2";
  }
  return "unknown";
}

bool parse_metric(const std::string& name, Metric* out) {
  if (name == "ip") *out = Metric::IP;
  else if (name == "cosine") *out = Metric::Cosine;
  else if (name == "l2") *out = Metric::L2;
  else return false;
  return true;
}

}  // namespace gt
