#pragma once
// A Gaussian process regression with a Matérn 5/2 kernel (Rasmussen & Williams, "Gaussian
// Processes for Machine Learning", 2006: eq. 2.25-2.26 for the posterior, 5.8-5.9 for the log
// marginal likelihood and its gradient, 4.17 for the kernel), zero prior mean, on inputs the
// caller scaled to [0, 1]. Linear algebra is Eigen's (LLT); only the sweep's Bayesian strategy
// includes this header.

#include <Eigen/Core>
#include <random>

namespace shardtune::sweep {

// The kernel k(x, x') = s * (1 + sqrt(5) r + 5/3 r^2) exp(-sqrt(5) r), r^2 = sum_d ((x_d - x'_d) / l_d)^2,
// and the noise variance added on the diagonal of the observations' covariance.
struct GpHyperparameters {
  Eigen::VectorXd length_scales;  // l_d, one per input dimension
  double signal_variance = 1.0;   // s
  double noise_variance = 1e-6;

  // As the optimizer sees them: log l_1..l_D, log s, log noise.
  Eigen::VectorXd ToLog() const;
  static GpHyperparameters FromLog(const Eigen::VectorXd& log_params);
};

// Where the fit starts, and what is used when the observations cannot inform a fit (all equal):
// length scales 0.3, signal variance 1, noise 1e-3.
GpHyperparameters DefaultHyperparameters(int dims);

double Matern52(const Eigen::VectorXd& a, const Eigen::VectorXd& b, const GpHyperparameters& h);

class GaussianProcess {
 public:
  // x: one observation per row; y: their values. Fails (ErrorCode::kInternal) only if the
  // covariance is not positive definite, which the noise variance (> 0) rules out in exact arithmetic.
  GaussianProcess(Eigen::MatrixXd x, Eigen::VectorXd y, GpHyperparameters h);

  struct Prediction {
    double mean = 0;
    double variance = 0;  // of the latent function (no observation noise)
  };
  Prediction Predict(const Eigen::VectorXd& x) const;
  // log p(y | X, h), and its gradient with respect to ToLog()'s parameters.
  double LogMarginalLikelihood(Eigen::VectorXd* gradient = nullptr) const;
  const GpHyperparameters& hyperparameters() const { return h_; }

 private:
  Eigen::MatrixXd x_;
  Eigen::VectorXd y_;
  GpHyperparameters h_;
  Eigen::MatrixXd k_;      // K + noise I
  Eigen::MatrixXd l_;      // its Cholesky factor
  Eigen::VectorXd alpha_;  // (K + noise I)^-1 y
};

// The hyperparameters of largest log marginal likelihood: gradient ascent (Adam) over the log
// parameters within fixed bounds (length scales 0.01..20, signal variance 0.05..20, noise
// 1e-8..1, for inputs in [0, 1] and standardized y), from a default start and `restarts` random
// ones drawn from `rng`.
GpHyperparameters FitHyperparameters(const Eigen::MatrixXd& x, const Eigen::VectorXd& y, std::mt19937_64& rng,
                                     int restarts = 4);

// The expected improvement of a point below `best` (minimization) under N(mean, variance).
double ExpectedImprovement(double mean, double variance, double best);

}  // namespace shardtune::sweep
