"""CPU emulation of turbo_sdpa_vector_tc's data layout (no GPU needed).

Mirrors, in Python, what the kernel in
mlx_overlay/mlx/backend/cuda/device/turboquant_decode_tc.cuh does per lane: the raw
code loads (TcCodes), the turbo3 plane merge and plane-pair key indices
(kwords / tc_kdim), the key-pair value indices (x / y words), the byte ->
(c[first], c[second]) tables, the m16n8k16 fragment layouts of S^T = K Q^T
and O^T = V^T P^T (A: a0 row g cols 2t.., a1 row g+8, a2 row g cols 2t+8..,
a3 row g+8; B: b0 rows 2t.., b1 rows 2t+8.., col g; C: rows g, g+8, cols 2t,
2t+1), the transpose of P by movmatrix, the online softmax per column with
the fp16 range guards, and the mapping of the accumulators back to dims, for
one warp; compares with float64 attention. It checks the index reasoning, not the CUDA
code itself (the device tests in test_tq_cuda.py do that).

    python3 tests/cuda/emu_vector_tc.py
"""
import random

import numpy as np

M=0xFFFFFFFF
def unpack(words,bits,D):
    if bits==4: return [(words[i//8]>>(4*(i%8)))&15 for i in range(D)]
    return [((words[i//16]>>(2*(i%16)))&3)|(((words[D//16+i//32]>>(i%32))&1)<<2) for i in range(D)]
def pack(codes,bits,D):
    if bits==4:
        w=[0]*(D//8)
        for i,c in enumerate(codes): w[i//8]|=c<<(4*(i%8))
        return w
    w=[0]*(D//16+(D+31)//32)
    for i,c in enumerate(codes):
        w[i//16]|=(c&3)<<(2*(i%16)); w[D//16+i//32]|=(c>>2)<<(i%32)
    return w
def spread2to4(x):
    x&=0xFFFF; x=(x|(x<<8))&0x00FF00FF; x=(x|(x<<4))&0x0F0F0F0F; x=(x|(x<<2))&0x33333333; return x
def spread1to4(x):
    x&=0xFF; x=(x|(x<<12))&0x000F000F; x=(x|(x<<6))&0x03030303; x=(x|(x<<3))&0x11111111; return x
def n2b(x):
    x=(x|(x<<8))&0x00FF00FF; return (x|(x<<4))&0x0F0F0F0F
class Codes:
    def __init__(s,bits,D,CPT): s.b,s.D,s.CPT=bits,D,CPT; s.NW=CPT//8; s.NLO=CPT//16 if CPT>=16 else 1; s.NHI=CPT//32 if CPT>=32 else 1
    def load(s,vec,c):
        b,D,CPT=s.b,s.D,s.CPT
        if b==4: s.raw=[vec[s.NW*c+i] for i in range(s.NW)]; return
        raw=[]
        if CPT>=16: raw+= [vec[s.NLO*c+i] for i in range(s.NLO)]
        else: raw.append(vec[c>>1])
        if CPT>=32: raw+= [vec[D//16+s.NHI*c+i] for i in range(s.NHI)]
        else: raw.append(vec[D//16+c//(32//CPT)])
        s.raw=raw
    def nibbles(s,c):
        if s.b==4: return list(s.raw)
        CPT,NLO=s.CPT,s.NLO; out=[]
        for k in range(s.NW):
            l16=(s.raw[k>>1]>>(16*(k&1))) if CPT>=16 else (s.raw[0]>>(16*(c&1)))
            h8=(s.raw[NLO+(k>>2)]>>(8*(k&3))) if CPT>=32 else ((s.raw[NLO]>>(CPT*(c%(32//CPT))))>>(8*k))
            out.append((spread2to4(l16)|(spread1to4(h8)<<2))&M)
        return out
    def kwords(s,c):
        if s.b==4: return list(s.raw)
        CPT,NLO=s.CPT,s.NLO; kw=[0]*s.NW
        for i in range(CPT//16):
            L=s.raw[i]; h16=(s.raw[NLO+(i>>1)]>>(16*(i&1))) if CPT>=32 else (s.raw[NLO]>>(16*(c&1)))
            kw[2*i]=((L&0x0F0F0F0F)|(n2b(h16&0x3333)<<4))&M
            kw[2*i+1]=(((L>>4)&0x0F0F0F0F)|(n2b((h16>>2)&0x3333)<<4))&M
        return kw
def kdim(bits,p): return 2*p if bits==4 else 16*(p>>3)+4*(p&3)+2*((p>>2)&1)
def kentry(bits,e):  # codes (first, second)
    if bits==4: return (e&15, e>>4)
    return ((e&3)|((e>>2)&4), ((e>>2)&3)|((e>>3)&4))
def byte(w,k): return (w>>(8*k))&255

def check_bits():
    bad=0
    for D in (64,128,256):
      for bits in (3,4):
        for trial in range(50):
            codes=[random.randrange(1<<bits) for _ in range(D)]
            vec=pack(codes,bits,D); assert unpack(vec,bits,D)==codes
            # K side: lane t chunk D/4
            CPT=D//4
            for t in range(4):
                c=Codes(bits,D,CPT); c.load(vec,t); kw=c.kwords(t)
                for st in range(D//16):
                    for r in range(2):
                        p=2*st+r; w=kw[st>>1]; e=byte(w,2*(st&1)+r)
                        if bits==3: assert e<64
                        a,b=kentry(bits,e); d=CPT*t+kdim(bits,p)
                        if (a,b)!=(codes[d],codes[d+1]): bad+=1
            # V side: lane g chunk D/8; keys a,b
            codes2=[random.randrange(1<<bits) for _ in range(D)]; vec2=pack(codes2,bits,D)
            VC=D//8
            for g in range(8):
                ca=Codes(bits,D,VC); ca.load(vec,g); cb=Codes(bits,D,VC); cb.load(vec2,g)
                na=ca.nibbles(g); nb=cb.nibbles(g)
                for w in range(VC//8):
                    wa,wb=na[w],nb[w]
                    x=(wa&0x0F0F0F0F)|((wb<<4)&0xF0F0F0F0); y=((wa>>4)&0x0F0F0F0F)|(wb&0xF0F0F0F0)
                    for mm in range(4):
                        for xy,ww in ((0,x),(1,y)):
                            i=8*w+2*mm+xy; e=byte(ww,mm)
                            if bits==3: assert e<128
                            d=VC*g+i
                            if (e&15, e>>4)!=(codes[d],codes2[d]): bad+=1
    return bad

C3=[-2.1520,-1.3440,-0.7560,-0.2451,0.2451,0.7560,1.3440,2.1520]
C4=[-2.7326,-2.0690,-1.6180,-1.2562,-0.9424,-0.6568,-0.3881,-0.1284,0.1284,0.3881,0.6568,0.9424,1.2562,1.6180,2.0690,2.7326]
def cb(bits): return C3 if bits==3 else C4
f16=np.float16
def table(bits,key):
    c=cb(bits); n=256 if bits==4 else (64 if key else 128); out=[]
    for e in range(n):
        if bits==4 or not key: a,b=e&15,e>>4; a&= (1<<bits)-1; b&=(1<<bits)-1
        else: a,b=(e&3)|((e>>2)&4), ((e>>2)&3)|((e>>3)&4)
        out.append((f16(c[a]),f16(c[b])))
    return out
def mma(a,b,cacc):
    # one m16n8k16: a[lane]=(a0,a1,a2,a3) pairs, b[lane]=(b0,b1) pairs,
    # cacc[lane]=[c0,c1,c2,c3] -> new accumulators
    A=np.zeros((16,16),np.float32); B=np.zeros((16,8),np.float32)
    for lane in range(32):
        g,t=lane>>2,lane&3
        A[g,2*t:2*t+2]=a[lane][0]; A[g+8,2*t:2*t+2]=a[lane][1]
        A[g,2*t+8:2*t+10]=a[lane][2]; A[g+8,2*t+8:2*t+10]=a[lane][3]
        B[2*t:2*t+2,g]=b[lane][0]; B[2*t+8:2*t+10,g]=b[lane][1]
    Dm=A.astype(np.float64)@B.astype(np.float64)
    out=[]
    for l in range(32):
        g,t=l>>2,l&3
        d=[Dm[g,2*t],Dm[g,2*t+1],Dm[g+8,2*t],Dm[g+8,2*t+1]]
        out.append([cacc[l][x]+np.float32(d[x]) for x in range(4)])
    return out
def trans(x):
    # movmatrix.trans: x[lane]=(row lane/4, cols 2(lane%4)..) of an 8x8 matrix
    M=[[None]*8 for _ in range(8)]
    for l in range(32): M[l>>2][2*(l&3)]=x[l][0]; M[l>>2][2*(l&3)+1]=x[l][1]
    return [(M[2*(l&3)][l>>2],M[2*(l&3)+1][l>>2]) for l in range(32)]
def run(D,KB,VB,nrows,kL,seed):
    rng=np.random.default_rng(seed)
    q=rng.standard_normal((nrows,D)).astype(np.float32)
    kcodes=rng.integers(0,1<<KB,(kL,D)); vcodes=rng.integers(0,1<<VB,(kL,D))
    ks=(rng.random(kL)*0.5+0.05).astype(f16).astype(np.float32); vs=(rng.random(kL)*0.5+0.05).astype(f16).astype(np.float32)
    kvec=[pack(list(map(int,kcodes[j])),KB,D) for j in range(kL)]; vvec=[pack(list(map(int,vcodes[j])),VB,D) for j in range(kL)]
    scale_log2=4/np.sqrt(D)*1.4426950408889634
    KT=32 if D<=128 else 16; NT=KT//8; MT=KT//16; KS=D//16; DM=D//16; KC=D//4; VC=D//8
    kt_=table(KB,True); vt_=table(VB,False)
    # Q^T B fragments of row g (guard: rows scaled to 2^13..); lane keeps the
    # factors of rows 2t, 2t+1 (its S^T columns)
    qb=[]; eqs=[]
    for lane in range(32):
        g,t=lane>>2,lane&3
        qf=(q[g,KC*t:KC*t+KC]*np.float32(scale_log2)) if g<nrows else np.zeros(KC,np.float32)
        rowmax=np.abs(q[g]*np.float32(scale_log2)).max() if g<nrows else 0
        eq=13-int(np.floor(np.log2(rowmax))) if rowmax>0 else 0
        qs=np.float32(2.0**eq); eqs.append(eq)
        l=[]
        for s in range(KS):
            d0=kdim(KB,2*s); d1=kdim(KB,2*s+1)
            l.append(((f16(qf[d0]*qs),f16(qf[d0+1]*qs)),(f16(qf[d1]*qs),f16(qf[d1+1]*qs))))
        qb.append(l)
    qun=[[np.float32(2.0**-eqs[8*(l&3)+4*r]) for r in range(2)] for l in range(32)]
    o=[[[np.float32(0)]*4 for _ in range(DM)] for _ in range(32)]
    m=[[-np.inf]*2 for _ in range(32)]; lsum=[[np.float32(0)]*2 for _ in range(32)]; ev=0
    for jb in range(0,kL,KT):
        kw={}
        for lane in range(32):
            g,t=lane>>2,lane&3
            for j in range(NT):
                jk=jb+8*j+g; jk=jk if jk<kL else 0
                c=Codes(KB,D,KC); c.load(kvec[jk],t); kw[(lane,j)]=c.kwords(t)
        # S^T = K Q^T: m-tile mt rows = keys jb+16mt+g (+8)
        s=[[[np.float32(0)]*4 for _ in range(MT)] for _ in range(32)]
        for st in range(KS):
            for mt in range(MT):
                a=[]
                for l in range(32):
                    w0=kw[(l,2*mt)][st>>1]; w1=kw[(l,2*mt+1)][st>>1]; k=2*(st&1)
                    a.append((kt_[byte(w0,k)],kt_[byte(w1,k)],kt_[byte(w0,k+1)],kt_[byte(w1,k+1)]))
                res=mma(a,[qb[l][st] for l in range(32)],[s[l][mt] for l in range(32)])
                for l in range(32): s[l][mt]=res[l]
        kidx=lambda l,mt,x: jb+16*mt+8*(x>>1)+(l>>2)
        for l in range(32):
            for mt in range(MT):
                for x in range(4):
                    jj=kidx(l,mt,x)
                    s[l][mt][x]=np.float32(s[l][mt][x]*qun[l][x&1]*ks[jj]) if jj<kL else -np.inf
        # column max over the 8 lanes of the same t
        mref=[[0,0] for _ in range(32)]
        for l in range(32):
            t=l&3
            for r in range(2):
                mx=max([m[l][r]]+[s[l2][mt][x] for l2 in range(t,32,4) for mt in range(MT) for x in (r,2+r)])
                mref[l][r]=0 if mx==-np.inf else mx
                if mx!=m[l][r]:
                    al=np.float32(2.0**(m[l][r]-mref[l][r])); lsum[l][r]*=al
                    for i in range(DM): o[l][i][r]*=al; o[l][i][2+r]*=al
                    m[l][r]=mx
        vmax=max(vs[jb+j] for j in range(KT) if jb+j<kL)
        e=int(np.floor(np.log2(vmax)))
        if e>ev+4 or e<ev-8:
            fct=np.float32(2.0**(ev-e))
            for l in range(32):
                for i in range(DM): o[l][i]=[v*fct for v in o[l][i]]
            ev=e
        vf=np.float32(2.0**-ev)
        pb=[[None]*MT for _ in range(32)]
        for mt in range(MT):
            halves=[]
            for h in range(2):
                x=[]
                for l in range(32):
                    jj=jb+16*mt+8*h+(l>>2); vsc=vs[jj] if jj<kL else vs[0]
                    pp=[]
                    for r in range(2):
                        p=np.float32(2.0**(s[l][mt][2*h+r]-mref[l][r])); lsum[l][r]+=p; pp.append(f16(p*vsc*vf))
                    x.append(tuple(pp))
                halves.append(trans(x))
            for l in range(32): pb[l][mt]=(halves[0][l],halves[1][l])
        # O^T += V^T P^T
        for mt in range(MT):
            xs={}
            for lane in range(32):
                g,t=lane>>2,lane&3; nib=[]
                for u in range(4):
                    jv=jb+16*mt+2*t+(u&1)+8*(u>>1); jv=jv if jv<kL else 0
                    c=Codes(VB,D,VC); c.load(vvec[jv],g); nib.append(c.nibbles(g))
                for w in range(VC//8):
                    wa,wb,wc,wd=nib[0][w],nib[1][w],nib[2][w],nib[3][w]
                    xs[(lane,w)]=((wa&0x0F0F0F0F)|((wb<<4)&0xF0F0F0F0),((wa>>4)&0x0F0F0F0F)|(wb&0xF0F0F0F0),(wc&0x0F0F0F0F)|((wd<<4)&0xF0F0F0F0),((wc>>4)&0x0F0F0F0F)|(wd&0xF0F0F0F0))
            for w in range(VC//8):
                for mm in range(4):
                    i=4*w+mm
                    a=[tuple(vt_[byte(xs[(l,w)][y],mm)] for y in range(4)) for l in range(32)]
                    res=mma(a,[pb[l][mt] for l in range(32)],[o[l][i] for l in range(32)])
                    for l in range(32): o[l][i]=res[l]
    out=np.zeros((nrows,D))
    for lane in range(32):
        g,t=lane>>2,lane&3
        for r in range(2):
            row=2*t+r
            if row>=nrows: continue
            L=sum(lsum[l][r] for l in range(t,32,4))
            for i in range(DM):
                for c in range(2):
                    out[row,(D//8)*g+2*i+c]=o[lane][i][2*c+r]*2.0**ev/L
    kd=np.array(cb(KB))[kcodes]*ks[:,None]; vd=np.array(cb(VB))[vcodes]*vs[:,None]
    sc=(q.astype(np.float64)*4/np.sqrt(D))@kd.T; p=np.exp(sc-sc.max(1,keepdims=True)); p/=p.sum(1,keepdims=True)
    ref=p@vd
    return np.linalg.norm(out-ref)/np.linalg.norm(ref)
def main():
    bad=check_bits()
    print('index words vs docs/format.md: %d mismatches' % bad)
    ok=bad==0
    for D,KB,VB,nr,kL in ((64,4,4,4,70),(128,3,4,8,45),(128,4,3,3,33),(256,3,3,5,40),(64,3,3,8,64)):
        err=run(D,KB,VB,nr,kL,D+KB*7+VB)
        ok=ok and err<3e-3
        print("D=%d turbo%d/turbo%d rows=%d kL=%d: rel err %.2e (fp16)"%(D,KB,VB,nr,kL,err))
    print("OK" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
