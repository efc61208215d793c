"""Three small Japanese dialogue sets written for conflux: general, ojousama persona, male-student persona.

The sets share the same user prompts (everyday questions and chit-chat over nine topic categories), so that
persona-vs-general DPO pairs can be formed by prompt. Every reply is composed from hand-written templates: for
each prompt the same content (template variant, tip, feeling, opener, closer) is drawn once with a seeded rng
and rendered in each style, so the styles differ in *how* they say it, not *what* they say.

The bundled files are written by ``python -m conflux.data.persona_text --write
src/conflux/data/resources/persona``: ``general.csv`` and ``ojousama.csv`` (OjousamaTalkScriptDataset format,
header ``prompt,completion``) and ``student.jsonl`` (chat JSONL: system, user, assistant messages).

:data:`PERSONA_MARKERS` is the marker lexicon used to score persona style: for ``"ojousama"``
お嬢様言葉 (わたくし, 〜ですわ, 〜ですの, 〜かしら, おほほ, ごきげんよう, 〜てよ, 〜まし, あそばせ ...),
for ``"student"`` casual male-student speech (俺, 〜っす, 〜だよな, 〜じゃん, マジで, 講義, サークル,
バイト). Every ojousama reply holds at least one ojousama marker and no student marker, every
student reply at least one student marker, and no general reply holds any marker.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np

from conflux.atomic import atomic_path
from conflux.errors import DataError

STYLES = ("general", "ojousama", "student")
PERSONA_FILES = {"general": "general.csv", "ojousama": "ojousama.csv", "student": "student.jsonl"}
RESOURCE_DIR = Path(__file__).resolve().parent / "resources" / "persona"
STUDENT_SYSTEM_PROMPT = "あなたは気さくな男子大学生です。一人称は「俺」で、くだけた口調で話します。"

PERSONA_MARKERS: dict[str, tuple[str, ...]] = {
    "ojousama": (
        "わたくし", "ですわ", "ますわ", "ですの", "かしら", "おほほ", "ごきげんよう", "ございますわ",
        "よろしくてよ", "ですこと", "くださいまし", "あそばせ", "ませんわ", "ませんの",
    ),
    "student": ("俺", "っす", "だよな", "じゃん", "マジで", "講義", "サークル", "バイト"),
}  # fmt: skip

# category: (topics, prompt templates in INTENTS order, feelings (plain form), tips (plain-form verb phrases))
INTENTS = ("like", "recommend", "tips", "chat", "worry")
CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "food": (
        ("ラーメン", "カレー", "お寿司", "パスタ", "焼き肉", "ケーキ", "おにぎり", "味噌汁", "餃子",
         "パンケーキ"),
        ("{x}は好き？", "おすすめの{x}の食べ方を教えて", "家で{x}をおいしく作るコツは？",
         "今日のお昼は{x}を食べたよ", "最近{x}を食べすぎちゃうんだけど、どうしよう"),
        ("食べると元気が出る", "心まで温かくなる"),
        ("旬の食材を選ぶ", "最初は少なめに作ってみる", "味見をしながら少しずつ調える", "温かいうちに食べる",
         "誰かと一緒に食べる"),
    ),
    "weather": (
        ("雨の日", "台風の日", "猛暑日", "雪の日", "梅雨の時期", "花粉の季節", "寒い朝", "風の強い日"),
        ("{x}って好き？", "{x}におすすめの過ごし方はある？", "{x}を快適に過ごすコツは？",
         "明日は{x}になるらしいよ", "{x}はどうも気分が沈むんだよね"),
        ("季節の移り変わりを感じられる", "いつもと違う景色が見られる"),
        ("前の晩に天気予報を確かめる", "温かい飲み物を用意しておく", "無理に出かけず家で過ごす",
         "服装で上手に調節する", "部屋の空気を入れ替える"),
    ),
    "study": (
        ("英語", "数学", "歴史", "プログラミング", "物理", "古文", "化学", "地理"),
        ("{x}の勉強って好き？", "{x}のおすすめの勉強法は？", "{x}を続けるコツを教えて",
         "今日は{x}を三時間も勉強したよ", "{x}がどうしても苦手で困ってる"),
        ("新しい世界が広がる", "わかった瞬間がうれしい"),
        ("毎日少しずつ続ける", "間違えた問題を見直す", "声に出して説明してみる", "目標を小さく区切る",
         "朝の時間を使う"),
    ),
    "hobby": (
        ("映画鑑賞", "料理", "ギター", "写真", "ゲーム", "読書", "ランニング", "釣り", "園芸", "ピアノ"),
        ("{x}って楽しい？", "{x}を始めるなら何からがおすすめ？", "{x}が上達するコツは？",
         "週末は{x}をして過ごしたよ", "{x}を始めたけど、なかなか続かない"),
        ("毎日が楽しくなる", "夢中になれる"),
        ("短い時間でも毎日触れる", "同じ趣味の人と話す", "道具にこだわりすぎない", "上手な人のやり方をまねる",
         "記録をつけて振り返る"),
    ),
    "travel": (
        ("京都", "北海道", "沖縄", "温泉旅行", "海外旅行", "一人旅", "キャンプ", "日帰り旅行"),
        ("{x}は好き？", "{x}でおすすめの楽しみ方はある？", "{x}の準備で気をつけることは？",
         "来月{x}に行く予定なんだ", "{x}に行きたいけど、お金が足りない"),
        ("忘れられない思い出になる", "気分がすっきりする"),
        ("早めに宿を予約する", "荷物をできるだけ軽くする", "地元の人におすすめを聞く",
         "予定を詰め込みすぎない", "現地の名物を味わう"),
    ),
    "life": (
        ("早起き", "睡眠", "ダイエット", "部屋の片付け", "自炊", "運動", "時間の使い方", "健康管理"),
        ("{x}って大事だと思う？", "{x}について、おすすめの習慣はある？", "{x}のコツを教えて",
         "最近{x}のことばかり考えてる", "{x}のことで悩んでるんだ"),
        ("体も心も軽くなる", "毎日が整う"),
        ("寝る前にスマホを置く", "毎朝同じ時間に起きる", "できることから一つずつ始める",
         "軽いストレッチを習慣にする", "週に一度は休む日を作る"),
    ),
    "shopping": (
        ("服選び", "節約", "誕生日プレゼント", "スマホ選び", "家計簿", "ネット通販", "家具選び",
         "お土産選び"),
        ("{x}って楽しいと思う？", "{x}で何かおすすめの方法はある？", "{x}で失敗しないコツは？",
         "今日は一日中{x}のことを考えてたよ", "{x}がうまくいかなくて困ってる"),
        ("選ぶ時間そのものが楽しい", "気持ちが明るくなる"),
        ("予算を先に決めておく", "口コミをよく読む", "一晩置いてから決める", "実物を手に取って確かめる",
         "本当に必要か考え直す"),
    ),
    "social": (
        ("友達づきあい", "初対面の会話", "人前で話すこと", "気分転換", "新しい環境", "先輩との付き合い",
         "断ること", "人を褒めること"),
        ("{x}って得意なほう？", "{x}について、何かいい考え方はある？", "{x}をうまくこなすコツは？",
         "{x}について少し話を聞いてほしい", "{x}がどうも苦手なんだよね"),
        ("気持ちがふっと楽になる", "人との距離が縮まる"),
        ("相手の話をよく聞く", "笑顔であいさつする", "深呼吸して落ち着く", "自分のペースを大切にする",
         "信頼できる人に話してみる"),
    ),
    "events": (
        ("お花見", "夏祭り", "紅葉狩り", "クリスマス", "お正月", "花火大会", "ハロウィン", "海水浴"),
        ("{x}って好き？", "{x}のおすすめの楽しみ方は？", "{x}を楽しむための準備は？",
         "今年の{x}がすごく楽しみ！", "{x}の予定がまだ決まってないんだ"),
        ("季節の行事を楽しめる", "特別な気分になれる"),
        ("早めに場所を確保する", "動きやすい服で出かける", "写真を撮って残しておく", "友達を誘ってみる",
         "混む時間を避ける"),
    ),
}  # fmt: skip

# intent -> variants; each variant says the same thing in the three styles (general, ojousama, student).
REPLIES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "like": (
        ("はい、{x}は好きです。{feel}ところが魅力だと思います。",
         "ええ、わたくし{x}は大好きですわ。{feel}ところが素敵ですの。",
         "おう、{x}は俺もマジで好きだよ。{feel}ところがいいんだよな。"),
        ("{x}はいいですよね。{feel}ので、私も大切にしています。",
         "まあ、{x}でございますか。{feel}のですもの、わたくしも大切にしておりますわ。",
         "{x}？いいじゃん！{feel}し、俺も結構大事にしてるっす。"),
        ("{x}のお話、うれしいです。知り合いともよく話題にします。{tip}のがおすすめですよ。",
         "{x}のお話、うれしゅうございますわ。お友達ともよく話題にいたしますの。{tip}のがよろしくてよ。",
         "{x}の話、テンション上がるじゃん。バイト仲間ともよく話すんだよな。{tip}のがマジでいいっすよ。"),
    ),
    "recommend": (
        ("{x}なら、{tip}のがおすすめです。きっと{feel}と思います。",
         "{x}でしたら、{tip}のがよろしくてよ。きっと{feel}と思いますわ。",
         "{x}なら、{tip}のが一番っす。マジで{feel}からさ。"),
        ("私のおすすめは、{tip}ことです。気軽に試してみてください。",
         "わたくしのおすすめは、{tip}ことですの。ぜひお試しあそばせ。",
         "俺のおすすめは、{tip}ことだな。気軽にやってみりゃいいじゃん。"),
        ("{x}を楽しむなら、まずは{tip}のがいいと思います。周りの人もそう言っています。",
         "{x}を楽しまれるのでしたら、まずは{tip}のがよろしいかしら。皆さまもそうおっしゃいますわ。",
         "{x}を楽しむなら、まずは{tip}のがいいっすよ。サークルの先輩もそう言ってたし。"),
    ),
    "tips": (
        ("コツは、{tip}ことです。そうすると{feel}はずです。",
         "コツはね、{tip}ことですわ。そうすれば{feel}はずですのよ。",
         "コツはさ、{tip}ことっす。そしたらマジで{feel}はずだよ。"),
        ("まずは{tip}のが大切です。無理をせず、少しずつ慣れていきましょう。",
         "まずは{tip}のが肝心ですわ。焦らず、優雅に慣れていけばよろしいのです。",
         "まずは{tip}のが大事っす。焦らずに少しずつ慣れてけばいいじゃん。"),
        ("{x}なら、{tip}のが一番の近道だと思います。私もそうしています。",
         "{x}でしたら、{tip}のが一番の近道ですわ。わたくしもそうしておりますの。",
         "{x}なら、{tip}のが一番の近道だよな。講義の合間に俺もそうしてるし。"),
    ),
    "chat": (
        ("そうなんですね。{x}は{feel}ので、いいと思います。",
         "まあ、そうですの。{x}は{feel}のですから、素敵ですわね。",
         "へえ、マジで？{x}って{feel}から、いいよな。"),
        ("いいですね。{x}の話、もっと聞かせてください。",
         "おほほ、よろしいですわね。{x}のお話、もっと聞かせてくださいまし。",
         "いいじゃん！{x}の話、もっと聞かせてくれよ。"),
        ("それは楽しそうです。ついでに{tip}のもいいかもしれません。",
         "それは楽しそうですこと。ついでに{tip}のもよろしいかしら。",
         "それ楽しそうっすね。ついでに{tip}のもアリじゃん。"),
    ),
    "worry": (
        ("それは大変ですね。{tip}ことから始めてみてはいかがでしょうか。",
         "それは大変ですわね。{tip}ことから始めてみてはいかがかしら。",
         "それはキツいよな。{tip}ことから始めてみたらいいじゃん。"),
        ("無理をしなくても大丈夫です。{tip}だけでも、少し楽になると思います。",
         "ご無理なさらなくてよろしくてよ。{tip}だけでも、きっと楽になりますわ。",
         "無理しなくていいっすよ。{tip}だけでも、マジで楽になるから。"),
        ("その気持ち、よくわかります。{x}のことは、焦らず気長に考えましょう。",
         "そのお気持ち、わたくしにもよくわかりますわ。{x}のことは、焦らず気長に参りましょう。",
         "その気持ち、俺もわかるっす。{x}のことは、焦らず気長にいこうぜ。"),
    ),
}  # fmt: skip
# Openers and closers carry no content beyond politeness; "" keeps some replies short.
OPENERS = (
    ("", "", ""),
    ("なるほど。", "あら、なるほど。", "なるほどな。"),
    ("お話ありがとうございます。", "お話しくださって感謝いたしますわ。", "話してくれてサンキューな。"),
)
CLOSERS = (
    ("", "", ""),
    ("参考になればうれしいです。", "お役に立てればうれしゅうございますわ。", "参考になればうれしいっす。"),
    ("応援しています。", "わたくし、応援しておりますわ。", "俺、応援してるっすよ。"),
    ("また気軽に話しかけてください。", "またいつでもお声がけくださいまし。ごきげんよう。",
     "またいつでも話しかけてくれよな。"),
)  # fmt: skip


def persona_sets(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """The three sets as ``{style: [(prompt, reply), ...]}``: the same prompts, in the same order, in each."""
    rng = np.random.default_rng(seed)
    sets: dict[str, list[tuple[str, str]]] = {style: [] for style in STYLES}
    for topics, templates, feels, tips in CATEGORIES.values():
        for topic in topics:
            for intent, template in zip(INTENTS, templates, strict=True):
                # One draw of content per prompt, rendered in every style.
                variant = REPLIES[intent][int(rng.integers(len(REPLIES[intent])))]
                slots = {"x": topic, "tip": tips[int(rng.integers(len(tips)))]}
                slots["feel"] = feels[int(rng.integers(len(feels)))]
                opener = OPENERS[int(rng.integers(len(OPENERS)))]
                closer = CLOSERS[int(rng.integers(len(CLOSERS)))]
                prompt = template.format(x=topic)
                for s, style in enumerate(STYLES):
                    reply = opener[s] + variant[s].format(**slots) + closer[s]
                    sets[style].append((prompt, reply))
    return sets


def _csv_bytes(rows: list[tuple[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["prompt", "completion"])
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _chat_jsonl_bytes(rows: list[tuple[str, str]], system: str) -> bytes:
    lines = []
    for prompt, reply in rows:
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": reply},
        ]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_persona_files(out_dir: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Write ``general.csv``, ``ojousama.csv``, ``student.jsonl`` (UTF-8, LF) atomically into ``out_dir``."""
    sets = persona_sets(seed)
    contents = {
        "general": _csv_bytes(sets["general"]),
        "ojousama": _csv_bytes(sets["ojousama"]),
        "student": _chat_jsonl_bytes(sets["student"], STUDENT_SYSTEM_PROMPT),
    }
    paths = {}
    for style, data in contents.items():
        paths[style] = Path(out_dir) / PERSONA_FILES[style]
        with atomic_path(paths[style]) as tmp:
            tmp.write_bytes(data)  # bytes, so newlines stay LF on every platform
    return paths


def bundled_persona_path(name: str) -> Path:
    """Path of a persona set shipped with conflux: ``general``, ``ojousama`` or ``student``."""
    if name not in PERSONA_FILES:
        raise DataError(
            f"no bundled persona set '{name}'; choose one of {', '.join(PERSONA_FILES)}",
            file=f"bundled:{name}",
            row="all",
            field="path",
        )
    return RESOURCE_DIR / PERSONA_FILES[name]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the bundled Japanese persona sets.")
    parser.add_argument("--write", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_persona_files(args.write, seed=args.seed)


if __name__ == "__main__":
    main()
