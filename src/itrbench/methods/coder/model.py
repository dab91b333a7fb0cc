"""CODER (Wang et al., ECCV 2022) on the shared encoders. Equations -> code: docs/coder.md.

    L = lambda * L_DCL^I + L_M-DCL^I + L_DCL^C + L_PGC          (Eq. 8; each term switchable in `coder:`)
    S = beta * cos(v^I, w^I) + (1 - beta) * cos(v^C, w^C)       (inference; instance only without concepts)

Batch items are (image, caption) pairs; two items of one image are never each other's negatives, in the
batch or in the queues. Hooks: before_step = momentum update, after_step = enqueue the momentum keys,
on_epoch_end = PGC k-means; extra_state = queues + pseudo labels.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from itrbench import distributed
from itrbench.methods.coder.concepts import ConceptGCN, build_concepts, load_concepts
from itrbench.errors import ConfigError
from itrbench.losses.triplet import btr_loss, same_image_mask
from itrbench.methods.coder.losses import dcl_directional, dcl_loss, diversity
from itrbench.methods.coder.memory import CoupledQueue, momentum_update
from itrbench.methods.coder.pgc import PAPER_CAPTIONS, PAPER_K, PseudoLabels, scaled_k
from itrbench.models.base import ModelContext
from itrbench.models.dual import DualEncoder
from itrbench.models.encoders import l2norm

log = logging.getLogger(__name__)


class ConceptQuery(nn.Module):
    """Eq. 2: v^C = sum_i softmax_i(lambda * v_q^T W y_i) y_i, then l2-normalised (cosine is used throughout).

    W starts as the identity, so the first queries are plain cosine attention over the concepts.
    """

    def __init__(self, dim: int, lam: float):
        super().__init__()
        self.W = nn.Parameter(torch.eye(dim))
        self.lam = lam

    def forward(self, query: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        attn = torch.softmax(self.lam * (query.float() @ self.W) @ Y.T, dim=1)
        return l2norm(attn @ Y)


class CODER(DualEncoder):
    method_name = "coder"

    def __init__(self, config: dict, context: ModelContext):
        m, c = config["model"], config["coder"]
        if c["pgc"] and not c["concepts"]:
            raise ConfigError("coder.pgc: true needs coder.concepts: true (PGC classifies the concept embeddings)")
        super().__init__(config, context)  # the shared image and text encoders
        self.cfg = c
        dim = m["embed_dim"]
        self.explicit = c["diversity"] == "explicit"                 # instance-level DCL terms (Table 3)
        self.concept_explicit = c["concept_diversity"] == "explicit"  # L_DCL^C
        # MB only matters where an instance-level DCL term uses the diversity (not for BTR without M-DCL)
        self.use_mb = self.explicit and c["memory_bank_diversity"] and (c["instance_loss"] == "dcl" or c["mdcl"])

        # momentum key encoders + coupled queues: needed by M-DCL and by memory-bank diversity
        self.use_keys = c["mdcl"] or self.use_mb
        if self.use_keys:
            self.key_image = copy.deepcopy(self.image).requires_grad_(False)
            self.key_text = copy.deepcopy(self.text).requires_grad_(False)
            # a fine-tuned transformer gets its own momentum copy; frozen token features are shared as they are
            self.key_text_side = (copy.deepcopy(self.text_side).requires_grad_(False)
                                  if context.text_encoder is not None else None)
            self.queue = CoupledQueue(c["queue_size"], dim)
        self._pending = None

        self.use_concepts = c["concepts"]
        if self.use_concepts:
            concepts = self._concepts(config, context)
            self.gcn = ConceptGCN(concepts.word_vectors, concepts.adjacency, dim)
            self.query_v = ConceptQuery(dim, c["concept_lambda"])
            self.query_w = ConceptQuery(dim, c["concept_lambda"])

        self.use_pgc = c["pgc"]
        if self.use_pgc:
            n = int(context.n_train_captions)
            if n < 2:
                raise ConfigError("coder.pgc: needs the number of training captions (ModelContext.n_train_captions)")
            self.pgc_k = int(c["pgc_k"]) if c["pgc_k"] is not None else self._scaled_k(config, n)
            self.pgc_head = nn.Linear(dim, self.pgc_k, bias=False)  # P^C in R^{K x F}
            self.pseudo = PseudoLabels(n, dim, self.pgc_k, c["pgc_niter"], seed=config["seed"], proto_dim=dim,
                                       keep_if=c["pgc_reinit_below"])

    # ---- construction helpers ----
    @staticmethod
    def _scaled_k(config: dict, n_captions: int) -> int:
        family = config["coder"]["paper_family"]
        if family is None:
            raise ConfigError("coder.paper_family: set f30k or coco (the paper K and caption count that K is scaled "
                              "from), or give coder.pgc_k")
        paper_k = config["coder"]["pgc_k_paper"] or PAPER_K[family]
        return scaled_k(paper_k, n_captions, PAPER_CAPTIONS[family])

    @staticmethod
    def _concepts(config: dict, context: ModelContext):
        c = config["coder"]
        if c["concept_dir"] is not None:
            concepts = load_concepts(c["concept_dir"])
        else:
            folder = Path(context.work_dir) / "concepts"
            if (folder / "adjacency.npy").is_file():  # resumed or re-evaluated run: reuse what training built
                concepts = load_concepts(folder)
            else:
                if context.train_split is None:
                    raise ConfigError("coder.concept_dir: null needs the training split to build concepts from")
                concepts = build_concepts(context.train_split, folder, c["num_concepts"], c["word_vectors"],
                                          max_images=config["data"].get("max_train_images"))
        if concepts.num_concepts != c["num_concepts"]:
            log.warning("using %d concepts (coder.num_concepts is %d)", concepts.num_concepts, c["num_concepts"])
        return concepts

    # ---- encoders (encode_image / encode_text: DualEncoder's) ----
    @torch.no_grad()
    def encode_keys(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        side = self.key_text_side if self.key_text_side is not None else self.text_side
        return self.key_image(batch["regions"]).float(), self.key_text(*side(batch)).float()

    def concept_embed(self, v: torch.Tensor, w: torch.Tensor | None = None):
        Y = self.gcn()
        vc = self.query_v(v, Y)
        return vc if w is None else (vc, self.query_w(w, Y))

    def embed_images(self, batch):
        v = self.encode_image(batch)
        out = {"inst": v}
        if self.use_concepts:
            out["concept"] = self.query_v(v, self.gcn())
        return out

    def embed_captions(self, batch):
        w = self.encode_text(batch)
        out = {"inst": w}
        if self.use_concepts:
            out["concept"] = self.query_w(w, self.gcn())
        return out

    def score(self, img, cap):
        s = img["inst"].float() @ cap["inst"].float().T
        if not self.use_concepts:
            return s
        beta = self.cfg["beta"]
        # one fused GEMM-accumulate: beta * S_inst + (1 - beta) * S_concept
        return torch.addmm(s, img["concept"].float(), cap["concept"].float().T, beta=beta, alpha=1.0 - beta)

    # ---- training ----
    def training_loss(self, batch, epoch):
        c = self.cfg
        mu, gamma, eps = c["mu"], c["gamma"], c["eps"]
        v_local, w_local = self.encode_image(batch), self.encode_text(batch)
        # under torchrun: the loss of the whole global batch on every rank (docs/pipeline.md, "Multi-GPU")
        v, w = distributed.gather_with_grad(v_local), distributed.gather_with_grad(w_local)
        ids = distributed.all_gather_cat(batch["image_index"])
        n = v.shape[0]
        keys = tuple(map(distributed.all_gather_cat, self.encode_keys(batch))) if self.use_keys else None
        parts = {}
        # similarities in float32 even under bf16 autocast: mu * div can be ~0.05, bf16 would blur the logits
        with torch.autocast(v.device.type, enabled=False):
            v, w = v.float(), w.float()
            same = same_image_mask(ids)
            S = v @ w.T
            div_v = diversity(S, ~same, eps) if self.explicit else None
            div_w = diversity(S.T, ~same.T, eps) if self.explicit else None

            if self.use_keys:
                v_k, w_k = keys
                have_queue = self.queue.count > 0
                # candidates: momentum keys of this batch, then the queue (invalid slots masked out)
                S_vm = v @ torch.cat([w_k, self.queue.text]).T          # image anchors vs texts
                S_wm = w @ torch.cat([v_k, self.queue.image]).T         # text anchors vs images
                q_neg = self.queue.negative_mask(ids)
                neg_m = torch.cat([~same, q_neg], dim=1)
                if self.use_mb and have_queue:
                    div_v = 0.5 * (div_v + diversity(S_vm[:, n:], q_neg, eps))
                    div_w = 0.5 * (div_w + diversity(S_wm[:, n:], q_neg, eps))
                self._pending = (v_k, w_k, ids.detach())

            if c["instance_loss"] == "btr":
                l_inst = btr_loss(S, same, c["btr_margin"])
            else:
                l_inst = dcl_loss(S, same, div_v, div_w, mu, gamma)
            loss = c["lambda_instance"] * l_inst
            parts["l_inst"] = l_inst.item()

            if c["mdcl"]:
                pos = torch.arange(n, device=v.device)
                l_m = (dcl_directional(S_vm, pos, neg_m, div_v, mu, gamma)
                       + dcl_directional(S_wm, pos, neg_m, div_w, mu, gamma))
                loss = loss + l_m
                parts["l_mdcl"] = l_m.item()

            if self.use_concepts:
                vc, wc = self.concept_embed(v, w)
                Sc = vc @ wc.T
                dcv = diversity(Sc, ~same, eps) if self.concept_explicit else None
                dcw = diversity(Sc.T, ~same.T, eps) if self.concept_explicit else None
                l_c = dcl_loss(Sc, same, dcv, dcw, mu, gamma)
                loss = loss + l_c
                parts["l_concept"] = l_c.item()

            if self.use_pgc:
                # each rank collects its own pairs (its rows of the global batch); recluster() merges the ranks'
                mine = slice(distributed.world().rank * v_local.shape[0], (distributed.world().rank + 1) * v_local.shape[0])
                self.pseudo.collect(batch["caption_index"].cpu().numpy(),
                                    l2norm(v_local.detach().float() + w_local.detach().float()).cpu().numpy(),
                                    l2norm(vc[mine].detach() + wc[mine].detach()).cpu().numpy())
                cap_idx = distributed.all_gather_cat(batch["caption_index"])
                if self.pseudo.ready:  # labels come from the previous epoch's clustering
                    z = torch.as_tensor(self.pseudo.labels[cap_idx.cpu().numpy()], device=v.device)
                    keep = z >= 0
                    if keep.any():
                        l_p = (F.cross_entropy(self.pgc_head(vc[keep]), z[keep])
                               + F.cross_entropy(self.pgc_head(wc[keep]), z[keep]))
                        loss = loss + l_p
                        parts["l_pgc"] = l_p.item()
        if self.explicit:
            parts["div_mean"] = float(div_v.mean())
        parts["loss"] = loss.item()
        return loss, parts

    # ---- hooks ----
    def before_step(self):
        if self.use_keys and self.training:
            momentum_update(self.image, self.key_image, self.cfg["momentum"])
            momentum_update(self.text, self.key_text, self.cfg["momentum"])
            if self.key_text_side is not None:
                momentum_update(self.text_side, self.key_text_side, self.cfg["momentum"])

    def after_step(self):
        if self._pending is not None:
            self.queue.enqueue(*self._pending, gathered=True)  # keys of the global batch already
            self._pending = None

    def on_epoch_end(self, trainer, epoch):
        if not self.use_pgc:
            return None
        info = self.pseudo.recluster(epoch)
        if distributed.active():  # every rank clustered the same merged features; rank 0's result makes it exact
            p = self.pseudo
            p.labels, p.changed = distributed.broadcast_array(p.labels), distributed.broadcast_array(p.changed)
            if p.centroids is not None:
                p.centroids = distributed.broadcast_array(p.centroids)
            if p.prototypes is not None:
                p.prototypes = distributed.broadcast_array(p.prototypes)
        rows = np.flatnonzero(self.pseudo.changed)
        if len(rows):
            # a new or re-formed cluster: its old P^C row belonged to another group of pairs; start it as
            # pgc_init_scale * (unit prototype of the cluster's concept embeddings), i.e. a cosine classifier
            w = self.pgc_head.weight
            with torch.no_grad():
                w[torch.as_tensor(rows, device=w.device)] = (
                    self.cfg["pgc_init_scale"] * torch.as_tensor(self.pseudo.prototypes[rows], device=w.device, dtype=w.dtype))
        log.info("PGC after epoch %d: %s", epoch, info)
        return info

    def extra_state(self):
        state = {}
        if self.use_keys:
            state["queue"] = self.queue.state()
        if self.use_pgc:
            state["pgc"] = self.pseudo.state()
        return state

    def load_extra_state(self, state):
        if self.use_keys and "queue" in state:
            self.queue.load_state(state["queue"])
        if self.use_pgc and "pgc" in state:
            self.pseudo.load_state(state["pgc"])
