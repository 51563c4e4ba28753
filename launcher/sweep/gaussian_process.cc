#include "launcher/sweep/gaussian_process.h"

#include <Eigen/Cholesky>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "launcher/sweep/search_space.h"

namespace shardtune::sweep {

namespace {

const double kSqrt5 = std::sqrt(5.0);

// Bounds of the log parameters: length scales, signal variance, noise variance.
constexpr double kMinLength = 0.01, kMaxLength = 20;
constexpr double kMinSignal = 0.05, kMaxSignal = 20;
constexpr double kMinNoise = 1e-8, kMaxNoise = 1;

// The log-parameter vector [length scales..., signal, noise] at the given bounds.
Eigen::VectorXd LogBounds(int dims, double length, double signal, double noise) {
  Eigen::VectorXd v(dims + 2);
  v.head(dims).setConstant(std::log(length));
  v[dims] = std::log(signal);
  v[dims + 1] = std::log(noise);
  return v;
}

}  // namespace

Eigen::VectorXd GpHyperparameters::ToLog() const {
  const auto dims = length_scales.size();
  Eigen::VectorXd v(dims + 2);
  v.head(dims) = length_scales.array().log().matrix();
  v[dims] = std::log(signal_variance);
  v[dims + 1] = std::log(noise_variance);
  return v;
}

GpHyperparameters GpHyperparameters::FromLog(const Eigen::VectorXd& log_params) {
  const auto dims = log_params.size() - 2;
  GpHyperparameters h;
  h.length_scales = log_params.head(dims).array().exp().matrix();
  h.signal_variance = std::exp(log_params[dims]);
  h.noise_variance = std::exp(log_params[dims + 1]);
  return h;
}

GpHyperparameters DefaultHyperparameters(int dims) {
  GpHyperparameters h;
  h.length_scales = Eigen::VectorXd::Constant(dims, 0.3);
  h.signal_variance = 1.0;
  h.noise_variance = 1e-3;
  return h;
}

double Matern52(const Eigen::VectorXd& a, const Eigen::VectorXd& b, const GpHyperparameters& h) {
  const double r = ((a - b).array() / h.length_scales.array()).matrix().norm();
  return h.signal_variance * (1 + kSqrt5 * r + 5.0 / 3.0 * r * r) * std::exp(-kSqrt5 * r);
}

GaussianProcess::GaussianProcess(Eigen::MatrixXd x, Eigen::VectorXd y, GpHyperparameters h)
    : x_(std::move(x)), y_(std::move(y)), h_(std::move(h)) {
  const Eigen::Index n = x_.rows();
  k_.resize(n, n);
  for (Eigen::Index i = 0; i < n; ++i)
    for (Eigen::Index j = 0; j <= i; ++j)
      k_(i, j) = k_(j, i) = Matern52(x_.row(i).transpose(), x_.row(j).transpose(), h_);
  k_.diagonal().array() += h_.noise_variance;
  Eigen::LLT<Eigen::MatrixXd> llt(k_);
  ST_CHECK(llt.info() == Eigen::Success, "the GP covariance of {} points is not positive definite", n);
  l_ = llt.matrixL();
  alpha_ = llt.solve(y_);
}

GaussianProcess::Prediction GaussianProcess::Predict(const Eigen::VectorXd& x) const {
  const Eigen::Index n = x_.rows();
  Eigen::VectorXd k_star(n);
  for (Eigen::Index i = 0; i < n; ++i) k_star[i] = Matern52(x_.row(i).transpose(), x, h_);
  const Eigen::VectorXd v = l_.triangularView<Eigen::Lower>().solve(k_star);
  return {k_star.dot(alpha_), std::max(0.0, h_.signal_variance - v.squaredNorm())};
}

double GaussianProcess::LogMarginalLikelihood(Eigen::VectorXd* gradient) const {
  const Eigen::Index n = x_.rows();
  const double lml = -0.5 * y_.dot(alpha_) - l_.diagonal().array().log().sum() - 0.5 * n * std::log(2 * M_PI);
  if (gradient == nullptr) return lml;
  // d lml / d theta_j = 1/2 tr((alpha alpha^T - K^-1) dK/dtheta_j).
  const Eigen::MatrixXd k_inv = Eigen::LLT<Eigen::MatrixXd>(k_).solve(Eigen::MatrixXd::Identity(n, n));
  const Eigen::MatrixXd w = alpha_ * alpha_.transpose() - k_inv;
  const auto dims = h_.length_scales.size();
  gradient->setZero(dims + 2);
  for (Eigen::Index i = 0; i < n; ++i) {
    for (Eigen::Index j = 0; j < n; ++j) {
      const Eigen::ArrayXd scaled = (x_.row(i) - x_.row(j)).transpose().array() / h_.length_scales.array();
      const double r = std::sqrt(scaled.square().sum());
      const double decay = std::exp(-kSqrt5 * r);
      // d k / d log l_d = s 5/3 (1 + sqrt5 r) exp(-sqrt5 r) (dx_d / l_d)^2; d k / d log s = k.
      const double common = h_.signal_variance * 5.0 / 3.0 * (1 + kSqrt5 * r) * decay;
      gradient->head(dims) += 0.5 * w(i, j) * common * scaled.square().matrix();
      (*gradient)[dims] += 0.5 * w(i, j) * h_.signal_variance * (1 + kSqrt5 * r + 5.0 / 3.0 * r * r) * decay;
    }
  }
  (*gradient)[dims + 1] = 0.5 * w.trace() * h_.noise_variance;  // d K / d log noise = noise I
  return lml;
}

GpHyperparameters FitHyperparameters(const Eigen::MatrixXd& x, const Eigen::VectorXd& y, std::mt19937_64& rng,
                                     int restarts) {
  const int dims = static_cast<int>(x.cols());
  const Eigen::VectorXd lower = LogBounds(dims, kMinLength, kMinSignal, kMinNoise),
                        upper = LogBounds(dims, kMaxLength, kMaxSignal, kMaxNoise);
  const GpHyperparameters start = DefaultHyperparameters(dims);
  Eigen::VectorXd best_params = start.ToLog();
  double best_lml = -std::numeric_limits<double>::infinity();
  for (int restart = 0; restart <= restarts; ++restart) {
    Eigen::VectorXd theta = start.ToLog();
    if (restart > 0) {
      for (Eigen::Index i = 0; i < theta.size(); ++i) {
        // Length scales from 0.05 to 2, the variances anywhere in their bounds.
        const double lo = i < dims ? std::log(0.05) : lower[i], hi = i < dims ? std::log(2.0) : upper[i];
        theta[i] = lo + UnitDraw(rng) * (hi - lo);
      }
    }
    // Adam (Kingma & Ba, 2015) on -lml, projected onto the bounds.
    constexpr int kSteps = 150;
    constexpr double kRate = 0.05, kBeta1 = 0.9, kBeta2 = 0.999;
    Eigen::VectorXd m = Eigen::VectorXd::Zero(theta.size()), v = Eigen::VectorXd::Zero(theta.size());
    for (int step = 1; step <= kSteps; ++step) {
      Eigen::VectorXd gradient;
      double lml;
      try {
        lml = GaussianProcess(x, y, GpHyperparameters::FromLog(theta)).LogMarginalLikelihood(&gradient);
      } catch (const Error&) {
        break;  // not positive definite at these parameters: this start ends here
      }
      if (std::isfinite(lml) && lml > best_lml) {
        best_lml = lml;
        best_params = theta;
      }
      m = kBeta1 * m + (1 - kBeta1) * gradient;
      v = kBeta2 * v + (1 - kBeta2) * gradient.cwiseProduct(gradient);
      const Eigen::VectorXd m_hat = m / (1 - std::pow(kBeta1, step));
      const Eigen::VectorXd v_hat = v / (1 - std::pow(kBeta2, step));
      theta += (kRate * m_hat.array() / (v_hat.array().sqrt() + 1e-8)).matrix();  // ascent
      theta = theta.cwiseMax(lower).cwiseMin(upper);
    }
  }
  return GpHyperparameters::FromLog(best_params);
}

double ExpectedImprovement(double mean, double variance, double best) {
  const double sigma = std::sqrt(variance);
  const double improvement = best - mean;
  if (sigma < 1e-12) return std::max(0.0, improvement);
  const double z = improvement / sigma;
  const double cdf = 0.5 * std::erfc(-z / std::sqrt(2.0));
  const double pdf = std::exp(-0.5 * z * z) / std::sqrt(2 * M_PI);
  return improvement * cdf + sigma * pdf;
}

}  // namespace shardtune::sweep
