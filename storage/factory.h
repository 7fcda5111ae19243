// Builds the configured backend of each database tier.
#ifndef TF_HPS_STORAGE_FACTORY_H_
#define TF_HPS_STORAGE_FACTORY_H_

#include <memory>

#include "storage/backend.h"
#include "storage/options.h"

namespace tf_hps {

// The volatile database of `config`; nullptr when its type is "disabled".
// Throws HpsError (kUnimplemented for a type this build lacks, kUnavailable
// when a server cannot be reached, unless start_if_unreachable: then a Redis
// VDB starts unconnected and connects once a server answers).
std::unique_ptr<DatabaseBackend> MakeVolatileBackend(const VolatileDbConfig& config,
                                                     bool start_if_unreachable = false);

// The persistent database of `config`; nullptr when its type is "disabled".
std::unique_ptr<DatabaseBackend> MakePersistentBackend(const PersistentDbConfig& config);

}  // namespace tf_hps

#endif  // TF_HPS_STORAGE_FACTORY_H_
