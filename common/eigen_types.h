// Eigen vocabulary: maps over caller memory, so maths runs on wire and model buffers without
// copies.
#ifndef PS_COMMON_EIGEN_TYPES_H_
#define PS_COMMON_EIGEN_TYPES_H_

#include <Eigen/Dense>

namespace ps {

using Vector = Eigen::VectorXf;
using VectorRef = Eigen::Map<Eigen::VectorXf>;
using ConstVectorRef = Eigen::Map<const Eigen::VectorXf>;
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrixRef = Eigen::Map<RowMatrix>;
using ConstRowMatrixRef = Eigen::Map<const RowMatrix>;

}  // namespace ps

#endif  // PS_COMMON_EIGEN_TYPES_H_
