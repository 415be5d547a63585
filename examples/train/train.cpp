// attnkit example: training with exact attention. The forward keeps its log-sum-exp, the backward
// returns dq, dk and dv, and a few steps of gradient descent on the keys fit the output of a
// causal grouped-query attention to a target; then merge_attention_states splits the keys in two
// and gets the same output back (split-KV decoding, context parallelism). Last, CoAtNet's relative
// attention learns its table: gradient descent on dtable fits a target made with another table.
#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdio>

int main() {
  using attnkit::index_t;
  const index_t B = 2, H = 4, Hkv = 2, L = 96, D = 32;
  attnkit::tensor<float, 4> q({B, H, L, D}), k({B, Hkv, L, D}), v({B, Hkv, L, D}), target({B, H, L, D});
  attnkit::random_generator rng(1);
  for (auto* t : {&q, &k, &v, &target})
    for (index_t i = 0; i < t->size(); ++i) t->data()[i] = static_cast<float>(2.0 * rng.uniform() - 1.0);

  attnkit::attention_options opt;
  opt.mask.causal = attnkit::causal_mode::top_left;
  attnkit::tensor<float, 4> out({B, H, L, D}), dout(out.extents()), dq(q.extents()), dk(k.extents()),
      dv(v.extents());
  attnkit::tensor<float, 3> lse({B, H, L});

  // loss = 1/2 |out - target|^2, minimized over k by gradient descent
  for (int step = 0; step <= 30; ++step) {
    attnkit::full_attention(q.cview(), k.cview(), v.cview(), out.view(), lse.view(), opt);
    double loss = 0;
    for (index_t i = 0; i < out.size(); ++i) {
      dout.data()[i] = out.data()[i] - target.data()[i];
      loss += 0.5 * dout.data()[i] * dout.data()[i];
    }
    if (step % 10 == 0) std::printf("step %2d  loss %.4f\n", step, loss);
    attnkit::full_attention_backward(q.cview(), k.cview(), v.cview(), out.cview(), lse.cview(), dout.cview(),
                                     dq.view(), dk.view(), dv.view(), opt);
    for (index_t i = 0; i < k.size(); ++i) k.data()[i] -= 2.0f * dk.data()[i];
  }

  // The same attention from the two halves of the keys, merged. Query i sees keys j <= i: of the
  // first half that is top_left; of the second half (keys h + j'), j' <= i - h, which is
  // bottom_right over its L - h keys (j' <= i + (L - h) - L). A query before h sees none of them:
  // its second state has lse = -inf and is neutral in the merge.
  const index_t h = L / 2;
  auto keys = [&](attnkit::tensor<float, 4>& t, index_t j0, index_t n) {
    return attnkit::tensor_view<const float, 4>(t.data() + j0 * D, {B, Hkv, n, D}, t.cview().strides());
  };
  attnkit::tensor<float, 4> oa(out.extents()), ob(out.extents()), merged(out.extents());
  attnkit::tensor<float, 3> la(lse.extents()), lb(lse.extents()), lm(lse.extents());
  attnkit::full_attention(q.cview(), keys(k, 0, h), keys(v, 0, h), oa.view(), la.view(), opt);
  attnkit::attention_options second = opt;
  second.mask.causal = attnkit::causal_mode::bottom_right;
  attnkit::full_attention(q.cview(), keys(k, h, L - h), keys(v, h, L - h), ob.view(), lb.view(), second);
  attnkit::merge_attention_states(oa.cview(), la.cview(), ob.cview(), lb.cview(), merged.view(), lm.view());
  attnkit::full_attention(q.cview(), k.cview(), v.cview(), out.view(), lse.view(), opt);
  double err = 0;
  for (index_t i = 0; i < out.size(); ++i) err = std::fmax(err, std::fabs(merged.data()[i] - out.data()[i]));
  std::printf("two halves merged vs one call: max |diff| = %.2e\n", err);

  // Relative attention on a 6 x 8 grid: learn the table [heads, 2*6 - 1, 2*8 - 1] (loss as above).
  const attnkit::relative_grid grid{6, 8};
  const index_t G = grid.rows * grid.cols;
  auto rel_q = attnkit::tensor_view<const float, 4>(q.data(), {B, H, G, D}, q.cview().strides());
  auto rel_kv = [&](attnkit::tensor<float, 4>& t) {
    return attnkit::tensor_view<const float, 4>(t.data(), {B, Hkv, G, D}, t.cview().strides());
  };
  attnkit::tensor<float, 3> table({H, 2 * grid.rows - 1, 2 * grid.cols - 1}), truth(table.extents()),
      dtable(table.extents());
  for (index_t i = 0; i < truth.size(); ++i) truth.data()[i] = static_cast<float>(2.0 * rng.uniform() - 1.0);
  attnkit::relative_options ro;  // pre_softmax, key_minus_query
  attnkit::tensor<float, 4> rel_target({B, H, G, D}), rel_out({B, H, G, D}), rel_dout({B, H, G, D}),
      rel_dq({B, H, G, D}), rel_dk({B, Hkv, G, D}), rel_dv({B, Hkv, G, D});
  attnkit::tensor<float, 3> rel_lse({B, H, G});
  attnkit::relative_attention_2d(rel_q, rel_kv(k), rel_kv(v), truth.cview(), grid, rel_target.view(), ro);
  double first = 0, last = 0;
  for (int step = 0; step <= 100; ++step) {
    attnkit::relative_attention_2d(rel_q, rel_kv(k), rel_kv(v), table.cview(), grid, rel_out.view(),
                                   rel_lse.view(), ro);
    double loss = 0;
    for (index_t i = 0; i < rel_out.size(); ++i) {
      rel_dout.data()[i] = rel_out.data()[i] - rel_target.data()[i];
      loss += 0.5 * rel_dout.data()[i] * rel_dout.data()[i];
    }
    if (step == 0) first = loss;
    last = loss;
    if (step % 25 == 0) std::printf("relative step %3d  loss %.5f\n", step, loss);
    attnkit::relative_attention_2d_backward(rel_q, rel_kv(k), rel_kv(v), table.cview(), grid, rel_out.cview(),
                                            rel_lse.cview(), rel_dout.cview(), rel_dq.view(), rel_dk.view(),
                                            rel_dv.view(), dtable.view(), ro);
    for (index_t i = 0; i < table.size(); ++i) table.data()[i] -= 0.25f * dtable.data()[i];
  }
  return err < 1e-5 && last < 0.5 * first ? 0 : 1;
}
