import torch

from study.train.model import LSTMLanguageModel


def small(keep_prob=1.0):
    torch.manual_seed(0)
    return LSTMLanguageModel(vocab_size=50, hidden_size=8, num_layers=2, keep_prob=keep_prob, init_scale=0.1)


def test_parameters_are_tfs_lstm_biases_start_at_zero_the_rest_uniform_in_the_init_scale():
    """As TF's tutorial graph: the cell biases start at 0 (BasicLSTMCell's zeros initializer wins
    over the scope's uniform one); every other variable, the softmax bias included, is uniform."""
    model = small()
    # TF: embedding [V,H]; per layer kernel [2H,4H] + bias [4H]; softmax w [H,V] + b [V].
    tf_count = 50 * 8 + 2 * (2 * 8 * 4 * 8 + 4 * 8) + 8 * 50 + 50
    assert sum(p.numel() for p in model.trainable_parameters()) == tf_count
    for name, parameter in model.named_parameters():
        if name.startswith("lstm.bias"):
            assert parameter.abs().max() == 0
            assert parameter.requires_grad == name.startswith("lstm.bias_ih")  # bias_hh: frozen
        else:
            assert parameter.requires_grad
            assert parameter.abs().max() <= 0.1 and parameter.std() > 0.03
    assert {name for name, _ in model.named_parameters() if name.startswith("lstm.bias")} == {
        f"lstm.bias_{kind}_l{layer}" for kind in ("ih", "hh") for layer in (0, 1)
    }


def test_shapes_and_state_carry():
    model = small()
    x = torch.randint(0, 50, (3, 5))  # [batch, steps]
    logits, state = model(x, model.initial_state(3))
    assert logits.shape == (5, 3, 50)  # time-major
    assert state[0].shape == state[1].shape == (2, 3, 8)
    # Two windows with the state carried equal one window of twice the length.
    first, mid = model(x[:, :2], model.initial_state(3))
    second, _ = model(x[:, 2:], mid)
    assert torch.allclose(torch.cat([first, second]), logits, atol=1e-6)


def test_dropout_only_in_training_and_only_below_keep_prob_one():
    x = torch.randint(0, 50, (3, 5))
    deterministic = small(keep_prob=1.0).train()
    assert torch.equal(
        deterministic(x, deterministic.initial_state(3))[0], deterministic(x, deterministic.initial_state(3))[0]
    )
    dropped = small(keep_prob=0.5).train()
    assert not torch.equal(dropped(x, dropped.initial_state(3))[0], dropped(x, dropped.initial_state(3))[0])
    dropped.eval()
    assert torch.equal(dropped(x, dropped.initial_state(3))[0], dropped(x, dropped.initial_state(3))[0])


def test_a_sparse_embedding_gradient_holds_the_dense_one_row_by_row():
    """features(sparse=True), the fast step's: the same forward, and an embedding gradient of one
    row per word of x whose duplicates sum to the dense gradient."""
    model = small()
    x = torch.tensor([[1, 2, 1], [2, 2, 7]])  # [batch, steps], words repeated
    outputs, grads = {}, {}
    for sparse in (False, True):
        model.zero_grad(set_to_none=True)
        hidden, _ = model.features(x, model.initial_state(2), sparse=sparse)
        hidden.square().sum().backward()
        outputs[sparse], grads[sparse] = hidden, model.embedding.weight.grad
    assert torch.equal(outputs[True], outputs[False])
    assert grads[True].is_sparse and not grads[False].is_sparse
    assert grads[True]._values().shape == (6, 8)  # one row per word of x, duplicates apart
    assert torch.allclose(grads[True].to_dense(), grads[False], rtol=1e-6, atol=1e-9)
    logits, _ = model(x, model.initial_state(2))
    assert torch.equal(logits, model.softmax(outputs[False]).view(3, 2, -1))
