"""Generate appendices C (literature) and F (road map) from the repository: `make appendices`.

Appendix C links each paper to the notebooks present; appendix F puts the book's time table next
to the run times stored in the notebooks and the figures in results/*.json. Re-run this after
re-executing a notebook or changing a case study; tests/test_appendices.py fails while the
committed pages differ from what this script writes.
"""

import glob
import json
import os
import sys
from datetime import datetime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = {"appC_literature.md": "literature_page", "appF_roadmap.md": "roadmap_page"}


def links(patterns):
    found = []
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(REPO, pattern))):
            rel = os.path.relpath(path, REPO)
            if rel not in [f for f, _ in found]:
                found.append((rel, os.path.basename(path)))
    return found

# (paper, link, what it contributes, where in the course (section label), notebook glob patterns)
PAPERS = [
 ("Foundations", [
  ("Rumelhart, Hinton & Williams (1986), *Learning representations by back-propagating errors*",
   "https://doi.org/10.1038/323533a0",
   "backpropagation: the chain rule through a network", "3.1, 5",
   ["chapters/ch03_1_*.ipynb", "chapters/ch05_1_*.ipynb", "exercises/ch03_*.ipynb"]),
  ("LeCun et al. (1998), *Gradient-based learning applied to document recognition*", "https://doi.org/10.1109/5.726791",
   "convolutional networks trained end to end", "2, 6.3",
   ["chapters/ch02_foundations.ipynb", "chapters/ch06_3_*.ipynb"]),
  ("Kingma & Ba (2015), *Adam: a method for stochastic optimization*", "https://arxiv.org/abs/1412.6980",
   "the Adam optimiser, written from scratch and matched to `torch.optim`", "4.1", ["chapters/ch04_1_*.ipynb"]),
  ("Loshchilov & Hutter (2019), *Decoupled weight decay regularization*", "https://arxiv.org/abs/1711.05101",
   "AdamW, used to train every model from chapter 4 on", "4.1, 8.1",
   ["chapters/ch04_1_*.ipynb", "chapters/ch08_1_*.ipynb"]),
  ("Srivastava et al. (2014), *Dropout*", "https://jmlr.org/papers/v15/srivastava14a.html",
   "dropout against overfitting", "3.2, 8.1.1", ["chapters/ch03_2_*.ipynb", "chapters/ch08_1_*.ipynb"]),
  ("He et al. (2016), *Deep residual learning for image recognition*", "https://arxiv.org/abs/1512.03385",
   "residual connections (ResNet; also inside every Transformer block)", "6.3, 4.3",
   ["chapters/ch06_3_*.ipynb", "chapters/ch04_3_*.ipynb"]),
  ("Smith, Kindermans, Ying & Le (2018), *Don't decay the learning rate, increase the batch size*",
   "https://arxiv.org/abs/1711.00489", "a batch that grows during training, run against a constant one", "4.4",
   ["chapters/ch04_4_*.ipynb"]),
  ("McCandlish, Kaplan, Amodei et al. (2018), *An empirical model of large-batch training*",
   "https://arxiv.org/abs/1812.06162", "the critical batch size: why a small batch is enough early in training",
   "4.4", ["chapters/ch04_4_*.ipynb"]),
  ("Goodfellow, Bengio & Courville (2016), *Deep Learning* (book)", "https://www.deeplearningbook.org/",
   "the mathematics of chapter 5", "5", ["chapters/ch05_1_*.ipynb", "chapters/ch05_2_*.ipynb"]),
 ]),
 ("Transformers and language models", [
  ("Vaswani et al. (2017), *Attention is all you need*", "https://arxiv.org/abs/1706.03762",
   "scaled dot-product and multi-head attention, the Transformer", "4.2, 4.3",
   ["chapters/ch04_2_*.ipynb", "chapters/ch04_3_*.ipynb", "chapters/ch05_1_*.ipynb"]),
  ("Devlin et al. (2019), *BERT: pre-training of deep bidirectional Transformers for language understanding*",
   "https://arxiv.org/abs/1810.04805",
   "the encoder whose architecture MiniLM uses; masked-word pre-training; loaded into our own code",
   "2, 2.2, 4.3, 6.2",
   ["chapters/ch02_foundations.ipynb", "chapters/ch02_2_*.ipynb", "chapters/ch04_3_transformer.ipynb",
    "chapters/ch06_2_*.ipynb"]),
  ("Radford et al. (2019), *Language models are unsupervised multitask learners* (GPT-2)",
   "https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf",
   "the decoder-only GPT, pre-LayerNorm, weight tying", "4.3, 8.1, 9-10",
   ["chapters/ch04_3_*.ipynb", "chapters/ch08_1_*.ipynb", "chapters/ch09_10_1_*.ipynb"]),
  ("Ba, Kiros & Hinton (2016), *Layer normalization*", "https://arxiv.org/abs/1607.06450",
   "LayerNorm, written by hand and checked against PyTorch", "4.3", ["chapters/ch04_3_transformer.ipynb"]),
  ("Hendrycks & Gimpel (2016), *Gaussian error linear units (GELUs)*", "https://arxiv.org/abs/1606.08415",
   "the GELU of the feed-forward layer", "4.3", ["chapters/ch04_3_transformer.ipynb"]),
  ("Xiong et al. (2020), *On layer normalization in the Transformer architecture*", "https://arxiv.org/abs/2002.04745",
   "pre-LN against post-LN blocks at depth, measured", "4.3", ["chapters/ch04_3_transformer.ipynb"]),
  ("Su et al. (2024), *RoFormer: enhanced Transformer with rotary position embedding*",
   "https://arxiv.org/abs/2104.09864",
   "rotary positions (RoPE), beside learned and sinusoidal ones", "4.3", ["chapters/ch04_3_transformer.ipynb"]),
  ("Sennrich, Haddow & Birch (2016), *Neural machine translation of rare words with subword units*",
   "https://arxiv.org/abs/1508.07909",
   "byte-pair encoding (BPE): tokens per character, English and Chinese, and the API bill", "4.3",
   ["chapters/ch04_3_bpe_tokens.ipynb", "chapters/ch04_3_gpt.ipynb"]),
  ("Holtzman et al. (2020), *The curious case of neural text degeneration*", "https://arxiv.org/abs/1904.09751",
   "top-p (nucleus) sampling, beside temperature and top-k", "4.3", ["chapters/ch04_3_gpt.ipynb"]),
  ("Wang et al. (2020), *MiniLM*", "https://arxiv.org/abs/2002.10957",
   "the compact pretrained encoder used throughout (all-MiniLM-L6-v2)", "1, 6.2, 9-10",
   ["chapters/ch01_*.ipynb", "chapters/ch06_2_*.ipynb", "chapters/ch09_10_2_*.ipynb"]),
  ("Reimers & Gurevych (2019), *Sentence-BERT*", "https://arxiv.org/abs/1908.10084",
   "mean-pooled sentence embeddings for retrieval", "6.2", ["chapters/ch06_2_*.ipynb"]),
  ("Kaplan et al. (2020), *Scaling laws for neural language models*", "https://arxiv.org/abs/2001.08361",
   "6 N FLOPs per token; loss as a power law of model size", "1, 9-10",
   ["chapters/ch01_*.ipynb", "chapters/ch09_10_1_*.ipynb"]),
  ("Hoffmann et al. (2022), *Training compute-optimal large language models*", "https://arxiv.org/abs/2203.15556",
   "about 20 tokens per parameter (\"Chinchilla\"); a smaller model on more tokens beats a bigger one", "1, 9-10",
   ["chapters/ch01_*.ipynb", "chapters/ch09_10_1_*.ipynb", "chapters/ch09_10_3_*.ipynb"]),
  ("Pope et al. (2023), *Efficiently scaling Transformer inference*", "https://arxiv.org/abs/2211.05102",
   "the KV cache and the memory-bound decode step", "9-10", ["chapters/ch09_10_1_*.ipynb"]),
  ("Rajbhandari et al. (2020), *ZeRO*", "https://arxiv.org/abs/1910.02054",
   "16 bytes per parameter for mixed-precision Adam training", "1", ["chapters/ch01_*.ipynb"]),
  ("Hu et al. (2022), *LoRA: low-rank adaptation of large language models*", "https://arxiv.org/abs/2106.09685",
   "parameter-efficient fine-tuning, written by hand on MiniLM", "9-10", ["chapters/ch09_10_2_*.ipynb"]),
  ("Radford et al. (2021), *Learning transferable visual models from natural language supervision* (CLIP)",
   "https://arxiv.org/abs/2103.00020",
   "contrastive image-text training and zero-shot classification", "9-10", ["chapters/ch09_10_2_*.ipynb"]),
 ]),
 ("Generative image models", [
  ("Goodfellow et al. (2014), *Generative adversarial nets*", "https://arxiv.org/abs/1406.2661",
   "the two-player game and the non-saturating generator loss", "2.3", ["chapters/ch02_3_*.ipynb"]),
  ("Radford, Metz & Chintala (2016), *Unsupervised representation learning with deep convolutional GANs* (DCGAN)",
   "https://arxiv.org/abs/1511.06434", "the convolutional generator and discriminator, Adam with beta1 0.5", "2.3",
   ["chapters/ch02_3_*.ipynb"]),
  ("Miyato & Koyama (2018), *cGANs with projection discriminator*", "https://arxiv.org/abs/1802.05637",
   "how the class enters the discriminator", "2.3", ["chapters/ch02_3_*.ipynb"]),
  ("Mao et al. (2019), *Mode seeking generative adversarial networks for diverse image synthesis*",
   "https://arxiv.org/abs/1903.05628", "the mode-seeking term against mode collapse", "2.3",
   ["chapters/ch02_3_*.ipynb"]),
  ("Ho, Jain & Abbeel (2020), *Denoising diffusion probabilistic models*", "https://arxiv.org/abs/2006.11239",
   "the forward noising process and the noise-prediction objective", "2.3", ["chapters/ch02_3_*.ipynb"]),
  ("Song, Meng & Ermon (2021), *Denoising diffusion implicit models*", "https://arxiv.org/abs/2010.02502",
   "sampling in 25 steps instead of 1,000", "2.3", ["chapters/ch02_3_*.ipynb"]),
  ("Ho & Salimans (2022), *Classifier-free diffusion guidance*", "https://arxiv.org/abs/2207.12598",
   "steering each denoising step towards the requested class", "2.3", ["chapters/ch02_3_*.ipynb"]),
  ("Heusel et al. (2017), *GANs trained by a two time-scale update rule converge to a local Nash equilibrium* (FID)",
   "https://arxiv.org/abs/1706.08500", "the Fréchet distance between feature Gaussians", "2.3",
   ["chapters/ch02_3_*.ipynb"]),
  ("Dhariwal & Nichol (2021), *Diffusion models beat GANs on image synthesis*", "https://arxiv.org/abs/2105.05233",
   "why image products moved from GANs to diffusion", "2.3", ["chapters/ch02_3_*.ipynb"]),
 ]),
 ("Risks, privacy and cost control", [
  ("Zhang et al. (2017), *Understanding deep learning requires rethinking generalization*",
   "https://arxiv.org/abs/1611.03530",
   "networks fit their training data perfectly, noise included", "8.1.1", ["chapters/ch08_1_*.ipynb"]),
  ("Simonyan, Vedaldi & Zisserman (2014), *Deep inside convolutional networks* (saliency maps)",
   "https://arxiv.org/abs/1312.6034",
   "gradient saliency", "8.1.2", ["chapters/ch08_1_*.ipynb"]),
  ("Adebayo et al. (2018), *Sanity checks for saliency maps*", "https://arxiv.org/abs/1810.03292",
   "why explanations must be tested (our deletion test)", "8.1.2", ["chapters/ch08_1_*.ipynb"]),
  ("Carlini et al. (2021), *Extracting training data from large language models*", "https://arxiv.org/abs/2012.07805",
   "the extraction test on a GPT", "8.1.3", ["chapters/ch08_1_*.ipynb"]),
  ("Shokri et al. (2017), *Membership inference attacks against machine learning models*",
   "https://arxiv.org/abs/1610.05820",
   "membership inference", "8.1.4", ["chapters/ch08_1_*.ipynb", "solutions/ch08_*.ipynb"]),
  ("Yeom et al. (2018), *Privacy risk in machine learning: analyzing the connection to overfitting*",
   "https://arxiv.org/abs/1709.01604",
   "the loss-threshold attack (exercise 8.1)", "8.1.4", ["chapters/ch08_1_*.ipynb", "exercises/ch08_*.ipynb"]),
  ("Jacob et al. (2018), *Quantization and training of neural networks for efficient "
   "integer-arithmetic-only inference*",
   "https://arxiv.org/abs/1712.05877",
   "int8 quantisation", "8.2", ["chapters/ch08_2_*.ipynb"]),
  ("Han et al. (2015), *Learning both weights and connections for efficient neural networks*",
   "https://arxiv.org/abs/1506.02626",
   "magnitude pruning (exercise 8.2)", "8.2", ["chapters/ch08_2_*.ipynb", "exercises/ch08_*.ipynb"]),
  ("Hinton, Vinyals & Dean (2015), *Distilling the knowledge in a neural network*", "https://arxiv.org/abs/1503.02531",
   "knowledge distillation", "8.2", ["chapters/ch08_2_*.ipynb"]),
 ]),
 ("Trends, economics and society (Part III)", [
  ("Brown et al. (2020), *Language models are few-shot learners* (GPT-3)", "https://arxiv.org/abs/2005.14165",
   "the batch-size ramp of its training; the 2,048-token context of 2020", "4.4, 9-10",
   ["chapters/ch04_4_*.ipynb", "chapters/ch09_10_3_*.ipynb"]),
  ("Hendrycks et al. (2021), *Measuring massive multitask language understanding* (MMLU)",
   "https://arxiv.org/abs/2009.03300", "the benchmark behind \"cheaper and better\" in the price trend", "9-10",
   ["chapters/ch09_10_3_*.ipynb"]),
  ("Touvron et al. (2023), *LLaMA* and *Llama 2*", "https://arxiv.org/abs/2307.09288",
   "open-weight model sizes, training tokens and context lengths", "9-10", ["chapters/ch09_10_3_*.ipynb"]),
  ("Dubey et al. (2024), *The Llama 3 herd of models*", "https://arxiv.org/abs/2407.21783",
   "a 405 B open-weight model trained on 15.6 T tokens", "9-10", ["chapters/ch09_10_3_*.ipynb"]),
  ("Eloundou et al. (2023), *GPTs are GPTs: an early look at the labor market impact potential of large "
   "language models*", "https://arxiv.org/abs/2303.10130", "how many workers' tasks are exposed to LLMs", "10.1",
   ["chapters/ch09_10_3_*.ipynb"]),
  ("Brynjolfsson, Li & Raymond (2023), *Generative AI at work*", "https://www.nber.org/papers/w31161",
   "+14% issues resolved per hour for support agents with an AI assistant", "7, 10.1",
   ["chapters/ch09_10_3_*.ipynb"]),
  ("Noy & Zhang (2023), *Experimental evidence on the productivity effects of generative artificial "
   "intelligence*", "https://doi.org/10.1126/science.adh2586", "time and quality of writing tasks with ChatGPT",
   "10.1", ["chapters/ch09_10_3_*.ipynb"]),
 ]),
 ("Data", [
  ("Xiao, Rasul & Vollgraf (2017), *Fashion-MNIST*", "https://arxiv.org/abs/1708.07747",
   "the product images", "3, 6.3, 8, 9-10",
   ["chapters/ch03_2_*.ipynb", "chapters/ch06_3_*.ipynb", "chapters/ch08_2_*.ipynb"]),
  ("Harper & Konstan (2015), *The MovieLens datasets: history and context*", "https://doi.org/10.1145/2827872",
   "the ratings of the recommender", "6.4", ["chapters/ch06_4_*.ipynb"]),
 ]),
]


def literature_page() -> str:
    out = ["# Appendix C: Literature, tied to the notebooks that implement it", "",
           "The book's appendix C recommends two books, two papers and three websites, and gets one title",
           "wrong: it cites BERT as \"Pre-training of Deep **Neural Networks** for Language Understanding\"; the",
           "paper is *BERT: Pre-training of Deep **Bidirectional Transformers** for Language Understanding*",
           "(Devlin et al., 2019); draft 003's reading list (§7.3.1) repeats the same wrong title. Below, each",
           "paper the course relies on is listed with the notebook where you",
           "run what it introduced. Where a chapter's notebook is not part of the course yet, the section",
           "number is given without a link. Full citations are in [appendix G](appG_references.md).", ""]
    for section, papers in PAPERS:
        out += [f"## {section}", "", "| paper | what the course takes from it | run it in |", "|---|---|---|"]
        for title, url, what, where, patterns in papers:
            found = links(patterns)
            if found:
                cell = ", ".join(f"[{name}](../{rel})" for rel, name in found)
            else:
                cell = f"chapter {where} (notebook to come)"
            out.append(f"| [{title}]({url}) | {what} | {cell} |")
        out.append("")
    out += ["## Websites", "",
            "- [arXiv](https://arxiv.org/): preprints of nearly every paper above (the book names it too).",
            "- [PyTorch documentation](https://pytorch.org/docs/stable/): `torch.nn`, `torch.ao.quantization`, "
            "`torch.nn.utils.prune` as used in chapter 8.",
            "- [Hugging Face documentation](https://huggingface.co/docs): tokenisers and the pretrained checkpoints "
            "format read in chapters 4.3 and 6.2.",
            ""]
    return "\n".join(out)


def _timestamp(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def notebook_seconds(path):
    nb = json.load(open(path))
    total, timed, code = 0.0, 0, 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        code += 1
        ex = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            total += (_timestamp(ex["shell.execute_reply"]) - _timestamp(ex["iopub.execute_input"])).total_seconds()
            timed += 1
    return total if timed == code and code else None

def fmt(seconds):
    if seconds is None:
        return "not measured yet"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"

def rel(p):
    return os.path.relpath(p, REPO)

# phase, book weeks, what the course does for it, notebook globs whose stored run time measures it
PHASES = [
 ("1. Technology research and learning", "1 week",
  "run chapters 1-5 (background, foundations, principles, algorithms, maths)",
  ["chapters/ch01_*.ipynb", "chapters/ch02_*.ipynb", "chapters/ch03_*.ipynb", "chapters/ch04_*.ipynb",
   "chapters/ch05_*.ipynb"]),
 ("2. Requirements analysis and design", "2 weeks", "the build-vs-buy table and the cost calculator",
  ["chapters/ch07_*.ipynb"]),
 ("3. Data collection and preprocessing", "2 weeks",
  "fetch, verify and load every data set (appendix A checks them all)",
  ["chapters/appA_*.ipynb"]),
 ("4. Model training and tuning", "4 weeks", "the three case studies and the GPT: data, baselines, training, tuning",
  ["chapters/ch06_*.ipynb"]),
 ("5. Model evaluation and optimisation", "2 weeks", "risk checks and cost control (chapter 8)",
  ["chapters/ch08_*.ipynb"]),
 ("6. Deployment and monitoring", "1 week",
  "each case study behind a real HTTP API, latency measured (inside the chapter 6 notebooks)",
  []),
 ("7. Product iteration", "ongoing", "re-run the pipeline on new data: the same notebooks", []),
]


def roadmap_page() -> str:
    rows = []
    for phase, weeks, what, patterns in PHASES:
        files = sorted({p for pattern in patterns for p in glob.glob(os.path.join(REPO, pattern))})
        seconds = [notebook_seconds(p) for p in files]
        known = [s for s in seconds if s is not None]
        measured = (f"{fmt(sum(known))} over {len(known)} notebook(s)" if known else "not measured yet")
        if files and len(known) < len(files):
            measured += f" ({len(files) - len(known)} more without stored timings)"
        if not patterns:
            measured = "see below" if phase.startswith("6") else "-"
        rows.append((phase, weeks, what, measured))

    results = []
    for path in sorted(glob.glob(os.path.join(REPO, "results/*.json"))):
        try:
            record = json.load(open(path))
            for row in record["rows"]:
                results.append((rel(path), record.get("machine", "?"), record.get("size", "?"), row))
        except (ValueError, KeyError):
            continue

    out = ["# Appendix F: The road map and its time table, checked", "",
           "The book's appendix F gives a seven-step road map for a start-up's first large-model product and a",
           "time table of 13 weeks plus ongoing iteration. This page puts the time table next to what the same",
           "steps take in this course, **measured**: the stored run time of the notebooks that do each step (on",
           "the CI size, 2-core CPU) and, where the case studies have written them, the training and serving",
           "figures in `results/*.json`. It was generated from the repository as it stood when the page was",
           "written; chapter 7 (`ch07_value.ipynb`) reads the same files live. Stored run times come from",
           "whichever machine last executed each notebook, often a busy shared one, so treat them as upper",
           "bounds for an idle 2-core machine.", "",
           "## The book's time table next to measured compute time", "",
           "| phase (book) | book's estimate | in this course | compute time measured |", "|---|---|---|---|"]
    for phase, weeks, what, measured in rows:
        out.append(f"| {phase} | {weeks} | {what} | {measured} |")
    out += ["", "## Training and serving figures from the case studies", ""]
    if results:
        out += ["| file | machine | size | model | training time | p50 / p95 latency |", "|---|---|---|---|---|---|"]
        for path, machine, size, row in results:
            train = fmt(row.get("train_seconds")) if row.get("train_seconds") is not None else "-"
            if row.get("p50_ms") is not None and row.get("p95_ms") is not None:
                lat = f"{row['p50_ms']:.1f} / {row['p95_ms']:.1f} ms"
            else:
                lat = "-"
            out.append(f"| `{path}` | {machine} | {size} | {row.get('model', '?')} | {train} | {lat} |")
    else:
        out.append("No case study had written its `results/*.json` when this page was generated: "
                   "open chapter 7 for the live table.")
    out += ["", "## What the check shows", "",
    "- **Compute is not what takes weeks.** Every step of the road map runs, at the CI size, in minutes",
    "  of CPU time; at full size the case studies need minutes to hours on one GPU. The book's 13 weeks are",
    "  people's time: deciding what to build, getting and cleaning data you are allowed to use, and",
    "  evaluating honestly. Plan the weeks around those, and use measured run times (like the ones above)",
    "  to plan compute budgets instead of guessing.",
    "- **Step 5 as written leaks the test set.** The book says to \"use the validation set and the test set",
    "  to evaluate model performance, and optimise the model through cross-validation and hyper-parameter",
    "  search\". Tuning on the test set makes its score optimistic. Tune on a validation split (or by",
    "  cross-validation on the training data) and touch the test set **once**, at the end; every case",
    "  study in chapter 6 and chapter 8.1.1 follows that rule.",
    "- **Steps 4 and 5 overlap.** Tuning appears in both (\"choose the best parameters\" in 4,",
    "  \"hyper-parameter search\" in 5). In practice they are one loop: train, evaluate on validation, adjust.",
    "- **Missing steps.** The road map has no step for data rights and personal data (chapter 8.1: scrub",
    "  before training, test for memorisation and membership leakage before shipping), and no cost check",
    "  before deployment (chapter 8.2, chapter 7). Both belong between steps 5 and 6.",
    "- **Monitoring needs a baseline.** Step 6 says \"monitor model performance\": you can only notice a",
    "  drop if you recorded quality and latency at launch, which is what `results/*.json` are for.", "",
    "## A corrected road map", "",
    "```mermaid",
    "graph LR",
    "    A[1. Learn: chapters 1-5] --> B[2. Decide build vs buy: chapter 7]",
    "    B --> C[3. Data: rights, personal data scrubbed, splits fixed]",
    "    C --> D[4. Baseline, then train and tune on validation]",
    "    D --> E[5. Test once; risk and cost checks: chapter 8]",
    "    E --> F[6. Serve behind an API; record quality and latency]",
    "    F --> G[7. Monitor against the recorded baseline]",
    "    G -->|new data or drift| C",
    "```", ""]
    return "\n".join(out)


def main(argv) -> int:
    for name, builder in PAGES.items():
        path = os.path.join(REPO, "site", "appendix", name)
        with open(path, "w") as handle:
            handle.write(globals()[builder]())
        print("wrote", os.path.relpath(path, REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
